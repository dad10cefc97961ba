"""Candidate generator `log_reads`: the per-step log line that reads a device value (`loss.item()`) buffered on
the device and printed LOG_INTERVAL lines at a time, after one device->host read of all their values.

    for step in range(n):                          log_lines = []
        ...                                        for step in range(n):
        print(f"step {step} loss {loss.item():.6f}")   ...
                                                       log_lines.append((f"step {step} loss ", loss.detach(), ".6f", ""))
                                                       if len(log_lines) == LOG_INTERVAL:
                                                           print_log_lines(log_lines)
                                                   print_log_lines(log_lines)

The read value is one of `X.item()` (also after `.detach()` / `.cpu()`), `float(X)`, `round()` of either
printed without a spec, an f-string field `{X:<float spec>}` or a `%f`/`%e`/`%g` conversion of X (or of
`X.detach()`), in a `print` of one f-string, one `%`-formatted string or several arguments (`print("loss",
round(float(loss), 5))`, printed as the f-string `f"loss {round(float(loss), 5)}"`) that is a statement of the
loop body. Everything else on the line is evaluated where it was (same values, same order); only the read
value is formatted later, from the detached tensor of that step, as the line formatted it (the same spec, or
the same `round` / `float`) -- so the printed text is the same, but it comes out LOG_INTERVAL lines at a time,
and the training reads the device once per LOG_INTERVAL steps instead of every step.

Refused: other print calls in the loop (their order against the buffered lines would change), `return` /
`yield` in the loop (the buffered lines would be lost), a loop `else`, X changed in place in the loop, X not
assigned in the loop body from a computation (it could alias a tensor the step updates, e.g. a parameter),
several reads on one line (a number-formatted field of a name last assigned a certain Python number --
`float()`, `int()`, `round()`, `len()`, a `time` clock, arithmetic of those -- reads nothing and does not count), keyword
arguments to print, `!r` conversions of a read, a non-float format spec, a tensor printed without a spec (its
repr).
Whether X is a tensor (not a Python float or a numpy scalar) and that the training is unchanged are proven
by the verification stage on the user's run (whole-run check: parameters after every optimizer step equal).
"""
from __future__ import annotations

import json
import re
from typing import Optional

import libcst as cst
import libcst.matchers as m
from libcst.metadata import ParentNodeProvider

from .base import (Rewrite, add_imports, enclosing_function, expr, names_in, qualified_names, render, replace_nodes,
                   rewrites_at, start_line)
from .loop_syntax import assigned_from, fresh, is_tensor_expr

GENERATOR = "log_reads"
LOG_INTERVAL = 20                 # training steps whose log lines come out together, after one read
_FLOAT_SPEC = re.compile(r"^[^{}]*[eEfFgG%]$")
_PERCENT = re.compile(r"%(?:%|(?P<flags>[-+ 0]*)(?P<width>\d*)(?P<prec>\.\d+)?(?P<type>[diouxXeEfFgGcrsa]))")
_STRIPPED = ("detach", "cpu")
_CLOCKS = {"time.time", "time.perf_counter", "time.monotonic", "time.process_time"}

HELPER = '''
{interval} = {n}  # training steps whose log lines are printed together, after one device->host read


def {helper}(pending):
    """Print buffered log lines (head, device value, format, tail), reading all their values at once; the
    format is a format spec or the function the line applied to the value (`round(value, 5)`)."""
    values = torch.stack([value.reshape(()) for _, value, _, _ in pending]).tolist() if pending else []
    for (head, _, fmt, tail), value in zip(pending, values):
        print(f"{{head}}{{fmt(value) if callable(fmt) else format(value, fmt)}}{{tail}}")
    pending.clear()
'''


def candidates(source: str, line: int) -> list:
    return rewrites_at(source, line, cst.SimpleStatementLine, _rewrite,
                       lambda stmt: len(stmt.body) == 1 and isinstance(stmt.body[0], cst.Expr))


def _base(node) -> Optional[cst.BaseExpression]:
    """X of `X`, `X.detach()`, `X.cpu()`, `X.detach().cpu()` when X is a name."""
    while m.matches(node, m.Call(func=m.Attribute(attr=m.OneOf(*[m.Name(n) for n in _STRIPPED])), args=[])):
        node = node.func.value
    return node if isinstance(node, cst.Name) else None


def _read_of(node) -> Optional[cst.Name]:
    """X when `node` reads a tensor X as a Python number: `X.item()` (after detach/cpu) or `float(X)`."""
    if m.matches(node, m.Call(func=m.Attribute(attr=m.Name("item")), args=[])):
        return _base(node.func.value)
    if m.matches(node, m.Call(func=m.Name("float"), args=[m.Arg(keyword=None, star="")])):
        return _base(node.args[0].value)
    return None


def _unformatted_read(node) -> Optional[tuple]:
    """(X, the function of the read value the field prints) for a field printed without a format spec:
    `X.item()`, `float(X)` (float of the value: an integer tensor prints `5.0`), `round(<one of those>, n)`."""
    digits = None
    if m.matches(node, m.Call(func=m.Name("round"), args=[m.Arg(keyword=None, star=""), m.Arg(value=m.Integer(), keyword=None)])):
        node, digits = node.args[0].value, node.args[1].value.value
    x = _read_of(node)
    if x is None:
        return None
    as_float = m.matches(node, m.Call(func=m.Name("float")))
    value = "float(value)" if as_float else "value"
    return x, expr(f"lambda value: round({value}, {digits})" if digits is not None else ("float" if as_float else '""'))


def _implicit_read(node, host) -> Optional[cst.Name]:
    """X of a number-formatted `X`, `X.detach()`, `X.cpu()` that may be a tensor (Tensor.__format__ reads a
    0-d tensor); None for a name certainly holding a Python number."""
    x = _base(node)
    return x if x is not None and not host(x) else None


def _literal(text: str) -> cst.SimpleString:
    return cst.SimpleString(json.dumps(text, ensure_ascii=False))


def _split_fstring(node: cst.FormattedString, host=lambda x: False):
    """(head, X, format, tail) for an f-string with exactly one read field, else None; the format is a
    format-spec literal or a function of the read value (`_unformatted_read`). `host(name)`: the name is
    certainly a Python number (a number-formatted field of it reads nothing)."""
    if node.start not in ('f"', "f'"):
        return None
    explicit, implicit = [], []
    for k, part in enumerate(node.parts):
        if not isinstance(part, cst.FormattedStringExpression):
            continue
        spec, plain = part.format_spec, part.conversion is None and part.equal is None
        if not spec:
            unformatted = _unformatted_read(part.expression)
            if unformatted is not None:
                if not plain:
                    return None             # `{loss.item()!r}`
                explicit.append((k, *unformatted))
            continue
        x = _read_of(part.expression)
        found = explicit if x is not None else implicit
        x = x or _implicit_read(part.expression, host)     # `{loss:.6f}`: Tensor.__format__ reads a 0-d tensor
        if x is None:
            continue
        spec_text = "".join(s.value for s in spec) if all(isinstance(s, cst.FormattedStringText) for s in spec) else None
        if not plain or not spec_text or not _FLOAT_SPEC.match(spec_text):
            if found is explicit:
                return None
            continue
        found.append((k, x, _literal(spec_text)))
    # explicit reads (`.item()`, `float()`) first; else one number-formatted name (a 0-d tensor or a number)
    reads = explicit or implicit
    if len(reads) != 1:
        return None
    k, x, spec = reads[0]

    def piece(parts):
        if any(isinstance(p, cst.FormattedStringExpression) for p in parts):
            return node.with_changes(parts=list(parts))
        return _literal("".join(p.value for p in parts).replace("{{", "{").replace("}}", "}"))

    return piece(node.parts[:k]), x, spec, piece(node.parts[k + 1:])


def _joined(args) -> cst.FormattedString:
    """`print(a, b, ...)` as the one f-string it prints, `f"{a!s} {b!s}"`: string literals as text, a read
    printed without a spec (`round(float(loss), 5)`: str of a number is its format) as a field of its own."""
    parts = []
    for k, a in enumerate(args):
        if k:
            parts.append(cst.FormattedStringText(" "))
        v = a.value
        if isinstance(v, cst.SimpleString) and isinstance(v.evaluated_value, str):
            text = json.dumps(v.evaluated_value, ensure_ascii=False)[1:-1]
            parts.append(cst.FormattedStringText(text.replace("{", "{{").replace("}", "}}")))
        else:
            parts.append(cst.FormattedStringExpression(
                expression=v, conversion=None if _unformatted_read(v) is not None else "s"))
    return cst.FormattedString(parts=parts, start='f"', end='"')


def _split_percent(node: cst.BinaryOperation, host=lambda x: False):
    """(head, X, format-spec literal, tail) for `"... %.6f ..." % (..., X, ...)` with exactly one float conversion of a read."""
    if not (isinstance(node.operator, cst.Modulo) and isinstance(node.left, cst.SimpleString)):
        return None
    fmt = node.left.evaluated_value
    if not isinstance(fmt, str) or node.left.prefix.lower() not in ("", "u"):
        return None
    convs = [c for c in _PERCENT.finditer(fmt) if c.group(0) != "%%"]
    if "%" in _PERCENT.sub("", fmt):
        return None                         # `%(name)s`, `*` widths or a stray %
    values = list(node.right.elements) if isinstance(node.right, cst.Tuple) else [cst.Element(node.right)]
    if len(values) != len(convs) or any(isinstance(v, cst.StarredElement) for v in values):
        return None
    explicit, implicit = [], []
    for k, (c, v) in enumerate(zip(convs, values)):
        x = _read_of(v.value)
        found = explicit if x is not None else implicit
        x = x or _implicit_read(v.value, host)
        if x is not None and c.group("type") in "eEfFgG" and not (set(c.group("flags")) - {"+", " ", "0"}):
            found.append((k, x, c))
        elif found is explicit and x is not None:
            return None
    reads = explicit or implicit
    if len(reads) != 1:
        return None
    k, x, c = reads[0]
    flags = c.group("flags")
    spec = ("+" if "+" in flags else " " if " " in flags else "") + ("0" if "0" in flags else "") \
        + c.group("width") + (c.group("prec") or "") + c.group("type")

    def piece(text: str, vals: list):
        if not vals:
            return _literal(text.replace("%%", "%"))
        args = cst.Tuple([v.with_changes(comma=cst.MaybeSentinel.DEFAULT) for v in vals]) if len(vals) > 1 \
            else vals[0].value
        if len(vals) == 1 and isinstance(args, cst.Tuple):
            args = cst.Tuple([cst.Element(args)])
        return cst.BinaryOperation(left=_literal(text), operator=cst.Modulo(), right=args)

    return piece(fmt[:c.start()], values[:k]), x, _literal(spec), piece(fmt[c.end():], values[k + 1:])


def _host_number(meta, value, function, line: int, depth: int = 0) -> bool:
    """`value` (a name's last assigned value) is certainly a Python number: a number literal, `float()`/`int()`/
    `round()`/`len()` of anything, `time.time()`-style clocks, or arithmetic of those."""
    if value is None or depth > 8:
        return False
    if isinstance(value, (cst.Integer, cst.Float)):
        return True
    if isinstance(value, cst.UnaryOperation):
        return _host_number(meta, value.expression, function, line, depth + 1)
    if isinstance(value, cst.BinaryOperation):
        return all(_host_number(meta, v, function, line, depth + 1) for v in (value.left, value.right))
    if isinstance(value, cst.Name):
        return _host_number(meta, assigned_from(meta, function, value.value, line), function, line, depth + 1)
    if isinstance(value, cst.Call):
        if m.matches(value.func, m.Name("float") | m.Name("int") | m.Name("round") | m.Name("len")):
            return True
        return bool(qualified_names(meta, value.func) & _CLOCKS)
    return False


def _loop_of(meta, stmt):
    """The loop whose body holds `stmt`, directly or inside `if` branches; None when another compound
    statement (with, try, a def) is in between."""
    parents = meta[ParentNodeProvider]
    cur = parents.get(stmt)
    while isinstance(cur, cst.IndentedBlock):
        owner = parents.get(cur)
        if isinstance(owner, (cst.For, cst.While)):
            return owner
        while isinstance(owner, (cst.Else, cst.If)):
            owner = parents.get(owner)
        cur = owner
    return None


class _LoopFacts(cst.CSTVisitor):
    """What the loop body does that the rewrite depends on (nested defs and lambdas are not the loop's)."""

    def __init__(self, name: str):
        super().__init__()
        self.name = name
        self.prints, self.exits, self.in_place, self.assigned = 0, 0, False, []

    def visit_FunctionDef(self, node) -> bool:
        return False

    def visit_Lambda(self, node) -> bool:
        return False

    def visit_ClassDef(self, node) -> bool:
        return False

    def visit_Call(self, node) -> None:
        if m.matches(node.func, m.Name("print")):
            self.prints += 1
        f = node.func
        if isinstance(f, cst.Attribute) and f.attr.value.endswith("_") and not f.attr.value.endswith("__") \
                and m.matches(f.value, m.Name(self.name)):
            self.in_place = True
        if any(a.keyword is not None and a.keyword.value == "out" and m.matches(a.value, m.Name(self.name))
               for a in node.args):
            self.in_place = True

    def visit_Return(self, node) -> None:
        self.exits += 1

    def visit_Yield(self, node) -> None:
        self.exits += 1

    def visit_AugAssign(self, node) -> None:
        if m.matches(node.target, m.Name(self.name)):
            self.in_place = True

    def visit_AssignTarget(self, node) -> None:
        t = node.target
        if isinstance(t, cst.Subscript) and m.matches(t.value, m.Name(self.name)):
            self.in_place = True
        if m.matches(t, m.Name(self.name)) or isinstance(t, (cst.Tuple, cst.List)) and any(
                m.matches(e.value, m.Name(self.name)) for e in t.elements):     # `loss, num_pos = criterion(...)`
            self.assigned.append(node)


def _rewrite(meta, module, stmt: cst.SimpleStatementLine) -> Optional[Rewrite]:
    call = stmt.body[0].value
    if not (m.matches(call, m.Call(func=m.Name("print"))) and call.args
            and all(a.keyword is None and not a.star for a in call.args)):
        return None
    arg = call.args[0].value if len(call.args) == 1 else _joined(call.args)
    function, line = enclosing_function(meta, stmt), start_line(meta, stmt)

    def host(name: cst.Name) -> bool:
        return _host_number(meta, assigned_from(meta, function, name.value, line), function, line)

    split = _split_fstring(arg, host) if isinstance(arg, cst.FormattedString) else \
        _split_percent(arg, host) if isinstance(arg, cst.BinaryOperation) else None
    if split is None:
        return None
    head, x, spec, tail = split
    if any(_read_of(n) is not None for part in (head, tail) for n in m.findall(part, m.Call())):
        return None             # another read stays on the line (`{k: v.item() for ...}`): still a sync per step
    loop = _loop_of(meta, stmt)
    if loop is None or getattr(loop, "orelse", None) is not None:
        return None
    facts = _LoopFacts(x.value)
    loop.body.visit(facts)
    if facts.prints != 1 or facts.exits or facts.in_place:
        return None
    parents = meta[ParentNodeProvider]
    computed = [a for a in facts.assigned if isinstance(parents.get(a), cst.Assign) and len(parents[a].targets) == 1
                and not isinstance(parents[a].value, (cst.Name, cst.Attribute, cst.Subscript))]
    if not computed or len(computed) != len(facts.assigned):
        return None
    taken = names_in(module)
    interval, helper = fresh(taken, "LOG_INTERVAL"), fresh(taken, "print_log_lines")
    pending = fresh(taken, "log_lines")
    entry = cst.Tuple([cst.Element(head), cst.Element(expr(f"{x.value}.detach()")), cst.Element(spec),
                       cst.Element(tail)])
    append = stmt.with_changes(body=[cst.Expr(cst.Call(func=expr(f"{pending}.append"), args=[cst.Arg(entry)]))])
    flush_at = cst.parse_statement(f"if len({pending}) == {interval}:\n    {helper}({pending})\n")
    new_loop = replace_nodes(loop, {stmt: cst.FlattenSentinel([append, flush_at])})
    init = cst.parse_statement(f"{pending} = []\n").with_changes(leading_lines=loop.leading_lines)
    flush_end = cst.parse_statement(f"{helper}({pending})\n")
    new_loop = new_loop.with_changes(leading_lines=[])
    new_module = replace_nodes(module, {loop: cst.FlattenSentinel([init, new_loop, flush_end])}, meta)
    new_module = _insert_helper(new_module, HELPER.format(interval=interval, n=LOG_INTERVAL, helper=helper))
    new_source = render(add_imports(new_module, [("torch", None)]))
    why = is_tensor_expr(meta, x, function, start_line(meta, stmt))
    verified = ["everything on the line but the read value is evaluated where it was, in the same order",
                f"the read value is formatted later as the line formatted it ({cst.Module([]).code_for_node(spec)}): the "
                "printed text is the same",
                f"`{x.value}` is assigned a computed value in the loop body and not changed in place there",
                "no other print, return or yield in the loop: the buffered lines keep their order and are printed "
                "after the loop"]
    needs = ["the training is unchanged (the parameters after every optimizer step of the run are equal)"]
    if why:
        verified.append(f"`{x.value}` is a tensor: {why}")
    else:
        needs.insert(0, f"`{x.value}` is a tensor (not a Python or numpy number)")
    return Rewrite(new_source=new_source,
                   description=(f"Buffer the logged `{x.value}` on the device and print the log lines "
                                f"{LOG_INTERVAL} at a time ({interval}), after one device->host read of all their "
                                f"values, instead of reading it every step (one blocking sync per step on an NPU). "
                                f"The printed text is the same; it appears every {LOG_INTERVAL} steps."),
                   auto_applicable=True, generator=GENERATOR, verified=verified, needs_verification=needs,
                   constraints=[f"log lines appear {LOG_INTERVAL} at a time (raise or lower {interval} as you like)",
                                "if the step raises, the buffered lines of the last interval are not printed"])


def _insert_helper(module: cst.Module, helper_source: str) -> cst.Module:
    """The helper after the module's leading docstring and imports."""
    body = list(module.body)
    k = 0
    while k < len(body) and isinstance(body[k], cst.SimpleStatementLine) and all(
            isinstance(s, (cst.Import, cst.ImportFrom)) or (isinstance(s, cst.Expr) and isinstance(s.value, cst.SimpleString))
            for s in body[k].body):
        k += 1
    helper = list(cst.parse_module(helper_source).body)
    helper[0] = helper[0].with_changes(leading_lines=[cst.EmptyLine(), cst.EmptyLine()] if k else [])
    rest = body[k:]
    if rest:
        rest[0] = rest[0].with_changes(leading_lines=[cst.EmptyLine(), cst.EmptyLine()] + [
            l for l in rest[0].leading_lines if l.comment is not None])
    return module.with_changes(body=body[:k] + helper + rest)
