"""Candidate generators `map_broadcast` and `map_vmap`: loops (and comprehensions) that compute one result per
element independently, rewritten to one whole-tensor computation.

Shapes recognized (`T`, `A`, `B` loop-invariant; the body may hold any statements that only bind local names):

    out = []                                   torch.stack([f(x) for x in T])
    for x in T:            # zip(A, B), enumerate(T), range(n) with A[i] reads
        y = g(x)                               for i in range(n):
        out.append(f(x, y))                        out[i] = f(A[i], B[i], c)
    r = torch.stack(out)   # or torch.cat(out, d), or any other later use of `out`

Two candidates per loop, the first that verification accepts is offered:
* `map_broadcast` (only when every op of the body is elementwise): the per-element operands are replaced by the
  whole tensors (`x` -> `T`, `A[i]` -> `A[:n]`) and the body runs once; loop-invariant operands broadcast against
  the new leading dimension exactly as they did against one element as long as they have no more dimensions than
  one element -- which only the user's tensors show;
* `map_vmap`: the body becomes a local function and `torch.vmap` maps it over the leading dimension of each
  per-element operand (`in_dims` 0), the loop index, when the body uses it as a number, over a `torch.arange`.
  vmap refuses data-dependent Python control flow, `.item()`, in-place writes into loop-invariant tensors and
  random ops (they draw different numbers): the verification stage runs it on the user's tensors.

Statically the generator proves: the body binds only local names (no writes to anything that outlives an
iteration, no loop-carried value, no `break`/`return`), the results are collected in iteration order, and the
loop's names are not read after it. It cannot prove that the iterations are independent of values it cannot
see, that the per-element operands have equal leading sizes, or that broadcasting matches; so every candidate
needs verification and none is auto-applicable without it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import libcst as cst
import libcst.matchers as m
from libcst.metadata import ParentNodeProvider

from .base import (Rewrite, add_imports, analyzed, code, enclosing_function, expr, names_in,
                   node_index, qualified_names, render, replace_nodes, start_line, end_line)
from .loop_syntax import fresh, loops_at, used_after
from .scalar_reads import iteration, parents_of

BROADCAST, VMAP, STACKED = "map_broadcast", "map_vmap", "level_batch"
# Values that are visibly Python lists/tuples of tensors (per-level features, per-camera inputs).
_LIST_MAKERS = ("split", "unbind", "chunk", "tensor_split", "list", "tuple")

# Calls that act elementwise (and on broadcast operands) whatever the number of leading dimensions.
ELEMENTWISE = frozenset("""
abs neg exp exp2 expm1 log log1p log2 log10 sqrt rsqrt sin cos tan tanh sinh cosh asin acos atan atan2 sigmoid
relu relu6 gelu silu elu leaky_relu softplus hardtanh hardsigmoid hardswish mish erf erfc floor ceil round trunc
frac sign clamp clamp_min clamp_max clip where pow square reciprocal add sub mul div true_divide floor_divide
remainder fmod maximum minimum lerp logical_and logical_or logical_not logical_xor eq ne lt le gt ge isnan isinf
isfinite nan_to_num float double half bfloat16 long int bool to type_as masked_fill hypot logit
""".split())
_RANDOM = ("rand", "randn", "randint", "normal", "dropout", "bernoulli", "multinomial", "rand_like", "randn_like",
           "randint_like", "uniform_", "normal_", "randperm")


@dataclass
class MapLoop:
    node: cst.CSTNode                 # the For, or the torch.stack/cat call around a comprehension
    params: list                      # [(name in the body, batched expression)]
    body: list                        # statements run per element (may be empty)
    result: cst.BaseExpression        # the per-element value
    sink: tuple                       # ("collect", list name, "stack"|"cat"|"extend", dim, stack_stmt) | ("assign", target, lower, upper, op) | ("expr", call)
    index_as_number: Optional[str]    # the loop index name when the body uses it as a number
    index_range: Optional[tuple]      # (start, stop) code of that index
    # sums over the iterations: [(name, augmented, contribution)] for `acc = acc + E` / `acc += E`
    accumulators: list = field(default_factory=list)
    in_dims: dict = field(default_factory=dict)     # param -> the dim it is mapped over when not 0
    # `if COND: continue` in the body: the local name the body binds to COND instead (the iterations whose
    # COND holds are dropped from the collected results)
    skip: Optional[str] = None
    # further lists the iteration appends to (`uvs.append(...)`, `valids.append(...)`), after the sink's: extended
    extra_collects: list = field(default_factory=list)      # [(list name, per-element value)]


# ---------------------------------------------------------------------------------------------
# Recognizing the loop
# ---------------------------------------------------------------------------------------------
def _range_bounds(call: cst.Call) -> Optional[tuple]:
    args = [a.value for a in call.args]
    if len(args) == 1:
        return "0", code(args[0])
    if len(args) == 2:
        return code(args[0]), code(args[1])
    return None


class _Order(cst.CSTVisitor):
    """Names in evaluation order: ("read"|"bind", name). Values before targets; comprehension targets are local."""

    def __init__(self):
        super().__init__()
        self.events = []
        self.bad = []

    def _bind(self, t) -> None:
        if isinstance(t, cst.Name):
            self.events.append(("bind", t.value))
        elif isinstance(t, (cst.Tuple, cst.List)):
            for e in t.elements:
                self._bind(e.value)
        elif isinstance(t, cst.StarredElement):
            self._bind(t.value)
        else:                       # subscript / attribute target: a write through a name
            t.visit(self)
            self.events.append(("write", names_in(t.value) if hasattr(t, "value") else set()))

    def visit_Assign(self, node) -> bool:
        node.value.visit(self)
        for t in node.targets:
            self._bind(t.target)
        return False

    def visit_AugAssign(self, node) -> bool:
        node.value.visit(self)
        if isinstance(node.target, cst.Name):
            self.events.append(("read", node.target.value))
        self._bind(node.target)
        return False

    def visit_AnnAssign(self, node) -> bool:
        if node.value is not None:
            node.value.visit(self)
        self._bind(node.target)
        return False

    def visit_For(self, node) -> bool:
        node.iter.visit(self)
        self._bind(node.target)
        node.body.visit(self)
        if node.orelse is not None:
            node.orelse.visit(self)
        return False

    def _comp(self, node) -> bool:
        local = set()
        f = node.for_in
        while f is not None:
            local |= names_in(f.target)
            f = f.inner_for_in
        for n in sorted(names_in(node) - local):
            self.events.append(("read", n))
        return False

    visit_ListComp = visit_GeneratorExp = visit_SetComp = visit_DictComp = _comp

    def visit_Lambda(self, node) -> bool:
        self.bad.append("lambda")
        return False

    def visit_Name(self, node) -> None:
        self.events.append(("read", node.value))

    def visit_Return(self, node) -> None:
        self.bad.append("return")

    def visit_Yield(self, node) -> None:
        self.bad.append("yield")

    def visit_Global(self, node) -> None:
        self.bad.append("global")

    def visit_Nonlocal(self, node) -> None:
        self.bad.append("nonlocal")

    def visit_Del(self, node) -> None:
        self.bad.append("del")

    def visit_Try(self, node) -> None:
        self.bad.append("try")

    def visit_While(self, node) -> None:
        self.bad.append("while")

    def visit_FunctionDef(self, node) -> None:
        self.bad.append("def")

    def visit_ClassDef(self, node) -> None:
        self.bad.append("class")


def _outer_jumps(body: cst.BaseSuite) -> bool:
    """`break` / `continue` that belong to the loop itself (not to a loop nested in its body)."""
    found = []

    class _V(cst.CSTVisitor):
        def visit_For(self, node) -> bool:
            return False

        def visit_While(self, node) -> bool:
            return False

        def visit_Break(self, node) -> None:
            found.append(node)

        def visit_Continue(self, node) -> None:
            found.append(node)

    body.visit(_V())
    return bool(found)


def _local_body(stmts: list, params: set) -> Optional[set]:
    """The names the statements bind, when they only bind local names (each bound before it is read, writes
    only through those names, in-place methods only on them) and have no side effect outside; else None."""
    order = _Order()
    for s in stmts:
        s.visit(order)
    if order.bad:
        return None
    bound, locals_ = set(params), set()
    for kind, what in order.events:
        if kind == "bind":
            bound.add(what)
            locals_.add(what)
    seen = set(params)
    for kind, what in order.events:
        if kind == "read" and what in locals_ and what not in seen:
            return None                 # read before this iteration binds it: a loop-carried value
        if kind == "bind":
            seen.add(what)
        if kind == "write" and not (what and what <= (locals_ - set(params))):
            return None                 # writes into something that outlives the iteration (or into an input)
    for s in stmts:
        if not _effect_free(s, locals_ - set(params)):
            return None
    return locals_


def _effect_free(stmt, locals_: set) -> bool:
    """No bare expression statements except `.append/.extend/.insert` on local lists; no in-place method or
    `out=` on anything but local names; no random op."""
    bad = []

    class _V(cst.CSTVisitor):
        def visit_Expr(self, node) -> None:
            v = node.value
            if not (isinstance(v, cst.Call) and isinstance(v.func, cst.Attribute)
                    and v.func.attr.value in ("append", "extend", "insert")
                    and isinstance(v.func.value, cst.Name) and v.func.value.value in locals_):
                bad.append(node)

        def visit_Call(self, node) -> None:
            f = node.func
            name = f.attr.value if isinstance(f, cst.Attribute) else f.value if isinstance(f, cst.Name) else ""
            if name in _RANDOM:
                bad.append(node)
            if (isinstance(f, cst.Attribute) and name.endswith("_") and not name.endswith("__")
                    and not (names_in(f.value) <= locals_)):
                bad.append(node)
            if any(a.keyword is not None and a.keyword.value == "out" for a in node.args):
                bad.append(node)

    stmt.visit(_V())
    return not bad


def _index_reads(stmts: list, result, i: str) -> tuple:
    """([(subscript, element)] for reads `A[i]` / `A[:, i]` / `A[:, None, i, 0]` / `A[:, i:i + 1]` with A a
    loop-invariant name/attribute and the element holding `i` (see index_position), other uses of `i`)."""
    subs, other, seen = [], [], set()
    holder = cst.IndentedBlock(body=list(stmts) + [cst.SimpleStatementLine(body=[cst.Expr(result)])])
    parents = parents_of(holder)

    class _V(cst.CSTVisitor):
        def visit_Name(self, node) -> None:
            if node.value != i:
                return
            up = parents.get(node)
            if isinstance(parents.get(up), cst.Slice):     # `i + 1`, the upper bound of `i:i + 1`
                up = parents.get(up)
            el = parents.get(up)
            sub = parents.get(el)
            if (isinstance(el, cst.SubscriptElement) and _holds_index(el, i) and isinstance(sub, cst.Subscript)
                    and isinstance(sub.value, (cst.Name, cst.Attribute)) and index_position(sub, el, i) is not None
                    and not isinstance(parents.get(sub), cst.AssignTarget)):
                if id(el) not in seen:
                    seen.add(id(el))
                    subs.append((sub, el))
            else:
                other.append(node)

    holder.visit(_V())
    return subs, other


def _full(el: cst.SubscriptElement) -> bool:
    sl = el.slice
    return isinstance(sl, cst.Slice) and sl.lower is None and sl.upper is None and sl.step is None


def _new_axis(el: cst.SubscriptElement) -> bool:
    return isinstance(el.slice, cst.Index) and m.matches(el.slice.value, m.Name("None"))


def _unit_slice(el: cst.SubscriptElement, i: str) -> bool:
    """`i:i + 1`: the element at `i`, its dim kept."""
    sl = el.slice
    return (isinstance(sl, cst.Slice) and sl.step is None and m.matches(sl.lower, m.Name(i))
            and m.matches(sl.upper, m.BinaryOperation(left=m.Name(i), operator=m.Add(), right=m.Integer("1"))))


def _holds_index(el: cst.SubscriptElement, i: str) -> bool:
    return (isinstance(el.slice, cst.Index) and m.matches(el.slice.value, m.Name(i))) or _unit_slice(el, i)


def _basic(el: cst.SubscriptElement, i: str) -> bool:
    """An element that selects the same on every iteration by basic indexing: `:`, `None`, an integer literal, a
    slice with bounds that do not read `i`."""
    sl = el.slice
    if isinstance(sl, cst.Slice):
        return i not in names_in(sl)
    v = sl.value
    return m.matches(v, m.Name("None") | m.Integer() | m.UnaryOperation(operator=m.Minus(), expression=m.Integer()))


def index_position(sub: cst.Subscript, el: cst.SubscriptElement, i: str) -> Optional[int]:
    """A's dim that `el` (holding the loop index `i`) indexes in `sub` = `A[...]`, when every other element is
    basic (`_basic`: a new axis takes no dim of A, the others one each)."""
    j = next(j for j, e in enumerate(sub.slice) if e is el)
    if all(_basic(e, i) for e in sub.slice if e is not el):
        return sum(1 for e in sub.slice[:j] if not _new_axis(e))
    return None


def _element_read(sub: cst.Subscript, el: cst.SubscriptElement, param: str, i: str) -> cst.BaseExpression:
    """What `sub` reads, written on the element `param` (A's dim of `el` mapped away): `A[:, i]` -> `param`,
    `A[:, None, i, 0]` -> `param[:, None, 0]`, `A[:, i:i + 1]` -> `param[:, None]`."""
    none = cst.SubscriptElement(cst.Index(cst.Name("None")))
    rest = [none if e is el else e for e in sub.slice if e is not el or _unit_slice(el, i)]
    while rest and _full(rest[-1]):
        rest.pop()
    if not rest:
        return cst.Name(param)
    return cst.Subscript(value=cst.Name(param), slice=[e.with_changes(comma=cst.MaybeSentinel.DEFAULT) for e in rest])


def _python_int_use(uses: list, parents: dict) -> bool:
    """The index is used where a Python int is required (range(), a slice bound, a list index)."""
    for u in uses:
        cur = u
        while isinstance(parents.get(cur), (cst.BinaryOperation, cst.UnaryOperation)):
            cur = parents[cur]
        p = parents.get(cur)
        if isinstance(p, (cst.Slice, cst.Index)):
            return True
        if isinstance(p, cst.Arg):
            call = parents.get(p)
            if isinstance(call, cst.Call) and isinstance(call.func, cst.Name) and call.func.value in ("range", "int", "len", "float", "str"):
                return True
    return False


def _build_params(meta, loop_target, loop_iter, stmts, result, taken) -> Optional[tuple]:
    """(params, index_as_number, index_range, subscripts to replace) for the loop's iteration, else None."""
    parts = iteration(loop_target, loop_iter)
    if not parts:
        return None
    params, index_name, index_range, replace, in_dims = [], None, None, {}, {}
    element_sources = [it for _, it, kind in parts if kind == "element"]
    for tgt, it, kind in parts:
        if kind == "element":
            if not isinstance(tgt, cst.Name):
                return None         # tuple unpacking of rows: leave to the user
            params.append((tgt.value, code(it)))
            continue
        if not isinstance(tgt, cst.Name):
            return None
        i = tgt.value
        if it is not None:          # range(...)
            bounds = _range_bounds(it)
            if bounds is None:
                return None
            lower, upper = bounds
        else:                       # enumerate's counter
            lower, upper = "0", f"len({code(element_sources[0])})"
        subs, other = _index_reads(stmts, result, i)
        by_seq = {}
        for sub, el in subs:
            by_seq.setdefault((code(sub.value), index_position(sub, el, i)), []).append((sub, el))
        for (seq_c, k), nodes in by_seq.items():
            p = fresh(taken, f"{seq_c.split('.')[-1]}_{i}")
            lead = ":, " * k
            if lower == "0" and upper == f"len({seq_c})" and k == 0:
                sl = seq_c                  # all of it
            elif it is not None:
                sl = f"{seq_c}[{lead}{'' if lower == '0' else lower}:{upper}]"
            else:
                sl = f"{seq_c}[{lead}:{upper}]" if seq_c != code(element_sources[0]) or k else seq_c
            params.append((p, sl))
            if k:
                in_dims[p] = k
            for sub, el in nodes:
                replace[id(sub)] = _element_read(sub, el, p, i)
        if other:
            holder = cst.IndentedBlock(body=[cst.SimpleStatementLine(body=[cst.Expr(result)])] + list(stmts))
            if _python_int_use(other, parents_of(holder)):
                return None
            index_name, index_range = i, (lower, upper)
    return params, index_name, index_range, replace, in_dims


class _ReplaceIds(cst.CSTTransformer):
    def __init__(self, mapping: dict):
        super().__init__()
        self.mapping = mapping

    def on_leave(self, original, updated):
        return self.mapping.get(id(original), updated)


def _prev_and_next(meta, loop):
    """(block, the statement directly before `loop`, the statements after it)."""
    block = meta[ParentNodeProvider].get(loop)
    if not isinstance(block, (cst.IndentedBlock, cst.Module)):
        return None, None, None
    body = list(block.body)
    k = next(j for j, s in enumerate(body) if s is loop)
    return block, (body[k - 1] if k > 0 else None), (body[k + 1:] )


def _is_empty_list_assign(stmt, name: str) -> bool:
    return (isinstance(stmt, cst.SimpleStatementLine) and len(stmt.body) == 1
            and m.matches(stmt.body[0], m.Assign(targets=[m.AssignTarget(target=m.Name(name))], value=m.List(elements=[]))))


def _collect_call(meta, node, name: str) -> Optional[tuple]:
    """("stack"|"cat", dim, call) when `node` is `torch.stack(name[, dim])` / `torch.cat(name[, dim])`."""
    if not isinstance(node, cst.Call):
        return None
    q = qualified_names(meta, node.func)
    kind = "stack" if q & {"torch.stack"} else "cat" if q & {"torch.cat", "torch.concat", "torch.concatenate"} else None
    if kind is None or not node.args or not m.matches(node.args[0], m.Arg(value=m.Name(name), keyword=None, star="")):
        return None
    dim = "0"
    for a in node.args[1:]:
        if a.star or (a.keyword is not None and a.keyword.value != "dim"):
            return None
        dim = code(a.value)
    if len(node.args) > 2:
        return None
    return kind, dim, node


def _later_uses(meta, function, loop, name: str) -> list:
    """Name nodes `name` after the loop in the function, in order."""
    if function is None:
        return []
    after = end_line(meta, loop)
    found = []

    class _V(cst.CSTVisitor):
        def visit_Name(self, n) -> None:
            if n.value == name and start_line(meta, n) > after:
                found.append(n)

    function.visit(_V())
    return found


def _accumulation(stmt) -> Optional[tuple]:
    """(name, augmented, contribution) for `acc = acc + E`, `acc = E + acc` or `acc += E` (E not reading acc)."""
    if isinstance(stmt, cst.AugAssign) and isinstance(stmt.operator, cst.AddAssign) and isinstance(stmt.target, cst.Name):
        name, e, augmented = stmt.target.value, stmt.value, True
    elif (m.matches(stmt, m.Assign(targets=[m.AssignTarget(target=m.Name())], value=m.BinaryOperation(operator=m.Add())))):
        name, v, augmented = stmt.targets[0].target.value, stmt.value, False
        if m.matches(v.left, m.Name(name)):
            e = v.right
        elif m.matches(v.right, m.Name(name)):
            e = v.left
        else:
            return None
    else:
        return None
    return (name, augmented, e) if name not in names_in(e) else None


def _sink_of(stmt, loop) -> Optional[tuple]:
    """What a trailing body statement does with the iteration's value: ("collect", list, value),
    ("assign", target, op, value) for `out[i] = value` / `out[i] += value`, ("accumulate", name, augmented, value)."""
    if m.matches(stmt, m.Expr(value=m.Call(func=m.Attribute(value=m.Name(), attr=m.Name("append")),
                                           args=[m.Arg(keyword=None, star="")]))):
        return "collect", stmt.value.func.value.value, stmt.value.args[0].value
    if m.matches(stmt, m.Assign(targets=[m.AssignTarget(target=m.Subscript())]) | m.AugAssign(target=m.Subscript())):
        target = stmt.targets[0].target if isinstance(stmt, cst.Assign) else stmt.target
        if (len(target.slice) == 1 and isinstance(target.slice[0].slice, cst.Index)
                and isinstance(target.value, (cst.Name, cst.Attribute))
                and isinstance(target.slice[0].slice.value, cst.Name) and isinstance(loop.target, cst.Name)
                and target.slice[0].slice.value.value == loop.target.value
                and m.matches(loop.iter, m.Call(func=m.Name("range")))):
            return "assign", target.value, stmt.operator if isinstance(stmt, cst.AugAssign) else None, stmt.value
        return None
    acc = _accumulation(stmt)
    return ("accumulate",) + acc if acc is not None else None


def _skip_guard(stmts: list, taken: set) -> tuple:
    """(statements, name) with a top-level `if COND: continue` replaced by `name = COND`, (stmts, None)
    without one; None when there are several."""
    guards = [k for k, st in enumerate(stmts) if isinstance(st, cst.If) and st.orelse is None
              and _continue_only(st.body)]
    if not guards:
        return stmts, None
    if len(guards) > 1:
        return None
    k = guards[0]
    name = fresh(taken, "skipped")
    bind = cst.SimpleStatementLine(body=[cst.Assign(targets=[cst.AssignTarget(cst.Name(name))], value=stmts[k].test)])
    return stmts[:k] + [bind] + stmts[k + 1:], name


def _continue_only(suite) -> bool:
    body = suite.body if isinstance(suite, cst.SimpleStatementSuite) else \
        suite.body[0].body if (isinstance(suite, cst.IndentedBlock) and len(suite.body) == 1
                               and isinstance(suite.body[0], cst.SimpleStatementLine)) else []
    return len(body) == 1 and isinstance(body[0], cst.Continue)


def match_loop(meta, module, loop: cst.For) -> Optional[MapLoop]:
    if loop.orelse is not None or not isinstance(loop.body, cst.IndentedBlock):
        return None
    function = enclosing_function(meta, loop)
    taken = names_in(function) if function is not None else names_in(module)
    guarded = _skip_guard(list(loop.body.body), set(taken))
    if guarded is None:
        return None
    stmts, skip = guarded
    if _outer_jumps(cst.IndentedBlock(body=stmts)):
        return None
    # the trailing statements that hand each iteration's value out: at most one list append or row write, any
    # number of sums; every statement before them only computes
    sinks = []
    while stmts and isinstance(stmts[-1], cst.SimpleStatementLine) and len(stmts[-1].body) == 1:
        sink = _sink_of(stmts[-1].body[0], loop)
        if sink is None:
            break
        sinks.insert(0, sink)
        stmts.pop()
    main = [k for k in sinks if k[0] != "accumulate"]
    accs = [k for k in sinks if k[0] == "accumulate"]
    # several appends (one per list) are one map returning a tuple; row writes and sums stay one each
    if len(main) > 1 and any(k[0] != "collect" for k in main):
        return None
    main, extras = main[:1], main[1:]
    lists = [k[1] for k in main + extras]
    if not sinks or len({a[1] for a in accs}) != len(accs) or len(set(lists)) < len(lists):
        return None
    if extras and (skip is not None or function is None or names_in(function.params) & set(lists)):
        return None         # dropped iterations, or a list the caller passed in (it sees every append)
    if skip is not None and (accs or not main or main[0][0] != "collect"):
        return None         # dropped iterations: only collected results are filtered
    if skip is not None:
        taken = taken | {skip}
    body = stmts
    values = [k[-1] for k in main] + [k[-1] for k in extras] + [a[3] for a in accs]
    result = cst.Tuple(elements=[cst.Element(v) for v in values]) if len(values) > 1 else values[0]
    built = _build_params(meta, loop.target, loop.iter, body, result, taken)
    if built is None:
        return None
    params, index_name, index_range, replace, in_dims = built
    if not params and index_name is None:
        return None
    loop_names = names_in(loop.target)
    computed = names_in(cst.IndentedBlock(body=list(body) + [cst.SimpleStatementLine(body=[cst.Expr(result)])]))
    outside = {a[1] for a in accs} | {k[1] for k in extras}
    if main and main[0][0] == "assign":
        outside |= names_in(main[0][1])
    elif main:
        outside.add(main[0][1])
    if outside & computed or outside & loop_names:
        return None         # a sink's target is read inside the iteration: the iterations are not independent
    body = [s.visit(_ReplaceIds(replace)) for s in body]
    values = [v.visit(_ReplaceIds(replace)) for v in values]
    locals_ = _local_body(body, {p for p, _ in params} | ({index_name} if index_name else set()))
    if locals_ is None or not all(_effect_free(v, set()) for v in values):
        return None
    if used_after(meta, function, loop, locals_ | loop_names):
        return None
    sink = None
    if main and main[0][0] == "collect":
        sink = collect_sink(meta, function, loop, main[0][1])
        if (accs or extras) and sink[2] != "extend":
            sink = ("collect", main[0][1], "extend", None, None, None)
        if skip is not None and not (sink[2] == "extend" or (sink[2] == "stack" and sink[3] == "0")):
            return None
    elif main:
        lower, upper = _range_bounds(loop.iter)
        sink = ("assign", main[0][1], lower, upper, main[0][2])
    n = len(main) + len(extras)
    return MapLoop(node=loop, params=params, body=body, result=values[0] if main else None, sink=sink,
                   index_as_number=index_name, index_range=index_range,
                   accumulators=[(a[1], a[2], v) for a, v in zip(accs, values[n:])], in_dims=in_dims,
                   skip=skip, extra_collects=[(k[1], v) for k, v in zip(extras, values[len(main):n])])


def collect_sink(meta, function, loop, name: str) -> Optional[tuple]:
    """How the appended list is consumed: fused into `torch.stack/cat(name)` when `name = []` directly precedes
    the loop and that call is its only later use; else extended."""
    block, prev, _ = _prev_and_next(meta, loop)
    uses = _later_uses(meta, function, loop, name)
    if prev is not None and _is_empty_list_assign(prev, name) and len(uses) == 1:
        parents = meta[ParentNodeProvider]
        arg = parents.get(uses[0])
        call = parents.get(arg)
        found = _collect_call(meta, call, name) if isinstance(arg, cst.Arg) else None
        if found is not None and _plain_int(found[1]) is not None:
            kind, dim, call = found
            if kind == "stack" or int(dim) >= 0:
                return ("collect", name, kind, dim, prev, call)
    return ("collect", name, "extend", None, None, None)


def _plain_int(text: str) -> Optional[int]:
    try:
        return int(text)
    except ValueError:
        return None


def match_comprehension(meta, module, call: cst.Call) -> Optional[MapLoop]:
    """`torch.stack([EXPR for x in T])` / `torch.cat([...], dim)`."""
    q = qualified_names(meta, call.func)
    kind = "stack" if "torch.stack" in q else "cat" if q & {"torch.cat", "torch.concat"} else None
    if kind is None or not call.args or not isinstance(call.args[0].value, (cst.ListComp, cst.GeneratorExp)):
        return None
    comp = call.args[0].value
    if comp.for_in.ifs or comp.for_in.inner_for_in is not None or comp.for_in.asynchronous:
        return None
    dim = "0"
    for a in call.args[1:]:
        if a.star or (a.keyword is not None and a.keyword.value != "dim"):
            return None
        dim = code(a.value)
    if _plain_int(dim) is None or (kind == "cat" and int(dim) < 0) or len(call.args) > 2:
        return None
    function = enclosing_function(meta, call)
    taken = names_in(function) if function is not None else names_in(module)
    built = _build_params(meta, comp.for_in.target, comp.for_in.iter, [], comp.elt, taken)
    if built is None:
        return None
    params, index_name, index_range, replace, in_dims = built
    if not params:
        return None
    result = comp.elt.visit(_ReplaceIds(replace))
    if _local_body([], set()) is None or not _effect_free(result, set()):
        return None
    return MapLoop(node=call, params=params, body=[], result=result, sink=("collect", None, kind, dim, None, call),
                   index_as_number=index_name, index_range=index_range, in_dims=in_dims)


# ---------------------------------------------------------------------------------------------
# Emitting the candidates
# ---------------------------------------------------------------------------------------------
def _elementwise(ml: MapLoop) -> bool:
    """Every call in the body and result is elementwise, and the index is not used as a number."""
    if ml.index_as_number is not None:
        return False
    bad = []

    class _V(cst.CSTVisitor):
        def visit_Call(self, node) -> None:
            f = node.func
            name = f.attr.value if isinstance(f, cst.Attribute) else f.value if isinstance(f, cst.Name) else ""
            if name not in ELEMENTWISE:
                bad.append(node)

        def visit_Subscript(self, node) -> None:
            bad.append(node)        # indexing a per-element value means something else with a leading dim

        def visit_Attribute(self, node) -> None:
            if node.attr.value in ("shape", "T", "mT", "ndim"):
                bad.append(node)

    for node in list(ml.body) + ([ml.result] if ml.result is not None else []) + [e for _, _, e in ml.accumulators]:
        node.visit(_V())
    return not bad


def _substituted(body: list, values: list, mapping: dict):
    class _Sub(cst.CSTTransformer):
        def leave_Name(self, original, updated):
            return expr(mapping[original.value]) if original.value in mapping else updated

    return [st.visit(_Sub()) for st in body], [v.visit(_Sub()) for v in values]


def _wrap(text: str) -> str:
    return text if text.replace("_", "").replace(".", "").isalnum() or text.endswith(")") or text.endswith("]") else f"({text})"


def _emit(meta, module, ml: MapLoop, generator: str, taken: set) -> Optional[str]:
    """The new module source for `ml` rewritten by `generator`."""
    params = list(ml.params)
    if generator == STACKED:
        params = [(p, f"torch.stack({b})") for p, b in params]
    device_of = params[0][1] if params else None
    if ml.index_as_number is not None:
        if device_of is None:
            return None             # an arange on the host would meet device tensors inside vmap
        lo, hi = ml.index_range
        params.append((ml.index_as_number, f"torch.arange({lo}, {hi}, device={_wrap(device_of)}.device)"
                       if lo != "0" else f"torch.arange({hi}, device={_wrap(device_of)}.device)"))
    values = ([ml.result] if ml.result is not None else []) + [v for _, v in ml.extra_collects] + \
        [e for _, _, e in ml.accumulators]
    pre = []
    if ml.skip is not None:
        if generator != VMAP:
            return None
        values = values + [cst.Name(ml.skip)]
    if generator == BROADCAST:
        if ml.in_dims:
            return None
        mapping = {p: f"({b})" if not b.replace("_", "").replace(".", "").isalnum() and not b.endswith(("]", ")")) else b
                   for p, b in params}
        pre, values = _substituted(ml.body, values, mapping)
        outs = [code(v) for v in values]
    else:
        base = (code(ml.sink[1]) if ml.sink[0] == "assign" else ml.sink[1] or "item") if ml.sink else ml.accumulators[0][0]
        fname = fresh(taken, f"_{base.split('.')[-1]}_one")
        returned = values[0] if len(values) == 1 else cst.Tuple(elements=[cst.Element(v) for v in values])
        if ml.body:
            inner = [st if not isinstance(st, cst.SimpleStatementLine) else st.with_changes(leading_lines=[])
                     for st in ml.body]
            pre = [cst.FunctionDef(
                name=cst.Name(fname), params=cst.Parameters(params=[cst.Param(cst.Name(p)) for p, _ in params]),
                body=cst.IndentedBlock(body=inner + [cst.SimpleStatementLine(body=[cst.Return(returned)])]))]
            func = fname
        else:
            func = f"lambda {', '.join(p for p, _ in params)}: {code(returned)}"
        options = ""
        # operands mapped over another dim are moved to dim 0 first (a view): some batching rules (grid_sample)
        # mishandle operands whose batch dims sit at different positions
        batched = [f"{b}.movedim({ml.in_dims[p]}, 0)" if ml.in_dims.get(p) else b for p, b in params]
        single_collect = len(values) == 1 and ml.sink and ml.sink[0] == "collect"
        if single_collect and ml.sink[2] in ("stack", "cat") and ml.sink[3] not in ("0", None):
            options += f", out_dims={ml.sink[3]}"
        call = f"torch.vmap({func}{options})({', '.join(batched)})"
        if ml.skip is not None:
            # every iteration is computed; those whose condition held are dropped (one boolean selection)
            rows, dropped = fresh(taken, "rows"), fresh(taken, "dropped")
            pre.append(cst.parse_statement(f"{rows}, {dropped} = {call}\n"))
            outs = [f"{rows}[torch.logical_not({dropped})]"]
        elif len(values) == 1:
            outs = [call]
        else:
            names = [fresh(taken, f"{(n if isinstance(n, str) else 'rows')}_parts")
                     for n in ([ml.sink[1] if isinstance(ml.sink[1], str) else code(ml.sink[1]).split('.')[-1]]
                               if ml.sink else []) + [n for n, _ in ml.extra_collects] + [a[0] for a in ml.accumulators]]
            pre.append(cst.parse_statement(f"{', '.join(names)} = {call}\n"))
            outs = names
    out_stmts = []
    k = 0
    if ml.sink is not None:
        value, k = outs[0], 1
        if ml.sink[0] == "assign":
            _, target, lower, upper, op = ml.sink
            sl = f"{'' if lower == '0' else lower}:{upper}"
            out_stmts.append(f"{code(target)}[{sl}] {code(op).strip() if op is not None else '='} {value}")
        else:
            _, name, kind, dim, prev, call_node = ml.sink
            if kind in ("stack", "cat"):
                vmapped_dims = generator != BROADCAST and len(values) == 1
                if kind == "stack" and dim != "0" and not vmapped_dims:
                    value = f"{_wrap(value)}.movedim(0, {dim})"
                if kind == "cat":
                    d = int(dim)
                    if vmapped_dims:
                        value = f"{_wrap(value)}.flatten({d}, {d + 1})"
                    else:
                        value = f"{_wrap(value)}.flatten(0, 1)" if d == 0 else \
                            f"{_wrap(value)}.movedim(0, {d}).flatten({d}, {d + 1})"
                if name is None:    # comprehension: the stack/cat call itself is replaced
                    if pre:
                        return None
                    return render(add_imports(replace_nodes(module, {call_node: expr(value)}, meta), [("torch", None)]))
                new_stmts = pre + [cst.parse_statement(f"{name} = {value}\n")]
                return replace_collected(meta, module, ml.node, new_stmts, prev, (call_node, cst.Name(name)))
            out_stmts.append(f"{name}.extend({_wrap(value)}.unbind(0))")
    for (name, _), value in zip(ml.extra_collects, outs[k:]):
        out_stmts.append(f"{name}.extend({_wrap(value)}.unbind(0))")
    k += len(ml.extra_collects)
    for (name, augmented, _), value in zip(ml.accumulators, outs[k:]):
        out_stmts.append(f"{name} += {_wrap(value)}.sum(0)" if augmented else f"{name} = {name} + {_wrap(value)}.sum(0)")
    new_stmts = pre + [cst.parse_statement(x + "\n") for x in out_stmts]
    return replace_collected(meta, module, ml.node, new_stmts, None, None)


def replace_collected(meta, module, loop, new_stmts: list, drop_prev, swap) -> str:
    """Replace `loop` by `new_stmts`; drop the `name = []` before it and swap the `torch.stack(name)` call for
    `name` when the results are fused (`swap` = (call, replacement))."""
    first = new_stmts[0].with_changes(leading_lines=(drop_prev or loop).leading_lines)
    mapping = {loop: cst.FlattenSentinel([first] + list(new_stmts[1:]))}
    if drop_prev is not None:
        mapping[drop_prev] = cst.RemovalSentinel.REMOVE
    if swap is not None:
        mapping[swap[0]] = swap[1]
    return render(add_imports(replace_nodes(module, mapping, meta), [("torch", None)]))


def candidates(source: str, line: int) -> list:
    """Broadcast and vmap rewrites of the innermost map loop / stacked comprehension at `line`."""
    wrapper, meta = analyzed(source)
    module = wrapper.module
    found = None
    comps = [c for c in node_index(module).of(cst.Call)
             if start_line(meta, c) <= line <= end_line(meta, c) and c.args
             and isinstance(c.args[0].value, (cst.ListComp, cst.GeneratorExp))]
    for c in sorted(comps, key=lambda n: -start_line(meta, n)):
        found = match_comprehension(meta, module, c)
        if found is not None:
            break
    if found is None:
        for loop in loops_at(meta, module, line):
            found = match_loop(meta, module, loop)
            if found is not None:
                break
    if found is None:
        return []
    function = enclosing_function(meta, found.node)
    taken = names_in(function) if function is not None else names_in(module)
    out = []
    kinds = [_container(meta, function, found.node, b) for _, b in found.params]
    order = (BROADCAST, VMAP) if _elementwise(found) else (VMAP,)
    if "list" in kinds:
        order = (STACKED,)
    elif "unknown" in kinds:
        order = order + (STACKED,)
    for generator in order:
        new_source = _emit(meta, module, found, generator, set(taken))
        if new_source is None or new_source == source:
            continue
        out.append(_rewrite(meta, found, generator, new_source))
    return out


def _container(meta, function, node, batched: str) -> str:
    """"tensor", "list" (a Python sequence of tensors) or "unknown" for a batched operand's base value."""
    from .loop_syntax import assigned_from, is_tensor_expr

    base = expr(batched)
    while isinstance(base, cst.Subscript):
        base = base.value
    if is_tensor_expr(meta, base, function, start_line(meta, node)):
        return "tensor"
    value = assigned_from(meta, function, base.value, start_line(meta, node)) if isinstance(base, cst.Name) else None
    if isinstance(value, (cst.List, cst.Tuple, cst.ListComp)):
        return "list"
    if isinstance(value, cst.Call):
        f = value.func
        name = f.attr.value if isinstance(f, cst.Attribute) else f.value if isinstance(f, cst.Name) else ""
        if name in _LIST_MAKERS:
            return "list"
    return "unknown"


def _rewrite(meta, ml: MapLoop, generator: str, new_source: str) -> Rewrite:
    over = ", ".join(f"`{b}`" for _, b in ml.params) or "the loop index"
    collect = " and ".join(
        ([{"collect": "collects one result per element", "assign": "writes one row per index"}[ml.sink[0]]]
         if ml.sink else []) + ([f"sums into {', '.join('`' + a[0] + '`' for a in ml.accumulators)}"]
                                if ml.accumulators else []))
    if generator == STACKED:
        description = (f"Run the loop's op once on the stacked inputs: {over} {'are' if len(ml.params) > 1 else 'is'} "
                       f"stacked into one tensor each and the body is mapped over them with `torch.vmap` (one launch "
                       f"per op instead of one per element, e.g. per feature level or camera).")
        needs = [f"the tensors in {over} have equal shapes (else torch.stack raises and the loop stays, with that "
                 f"reason)", "the body runs under torch.vmap: no data-dependent Python control flow, .item(), "
                 "in-place writes into loop-invariant tensors or random ops"]
    elif generator == BROADCAST:
        description = (f"Compute all iterations at once: the loop {collect} with elementwise ops only, so the same "
                       f"expression on the whole of {over} gives every row in one pass (one launch per op instead "
                       f"of one per op and element).")
        needs = [f"loop-invariant operands broadcast against {over} as they did against one element (no more "
                 f"dimensions than one element)",
                 f"{over} {'have' if len(ml.params) > 1 else 'has'} one row per iteration (equal leading sizes)"]
    else:
        description = (f"Map the loop body over {over} with `torch.vmap` (one batched launch per op instead of one "
                       f"per op and element); the loop {collect}.")
        needs = ["the body runs under torch.vmap: no data-dependent Python control flow, .item(), in-place writes "
                 "into loop-invariant tensors or random ops",
                 f"{over} {'have' if len(ml.params) > 1 else 'has'} one row per iteration (equal leading sizes)"]
    if ml.accumulators:
        needs.append("summing the iterations' contributions in another order stays within the tolerance")
    if ml.skip is not None:
        description += (" The iterations the loop skips with `continue` are computed too and dropped from the "
                        "results by one boolean selection.")
        needs.append("the skip condition is a boolean per iteration under torch.vmap, and computing a skipped "
                     "iteration raises nothing and leaves the kept results and their gradients as they were")
    verified = ["the body binds only names local to one iteration, reads no value of an earlier iteration, writes "
                "nothing that outlives it and has no break/return",
                "results are kept in iteration order", "no loop name is read after the loop"]
    return Rewrite(new_source=new_source, description=description, auto_applicable=False,
                   constraints=["float results can differ in the last bits (batched kernels sum in another order)"]
                   + (["with zero iterations some ops raise under torch.vmap where the loop did nothing: keep the "
                       "loop if the count can be 0"] if generator != BROADCAST else []),
                   verified=verified, needs_verification=needs,
                   generator=generator)
