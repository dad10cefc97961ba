"""Candidate generator `device_checks`: checks on device tensors in the step that stop the host.

* `assert <tensor condition>[, "literal message"]` -> `torch._assert_async(<condition>[, "message"])`: the
  condition is checked on the device without a host read (on an NPU the failure surfaces at the next sync;
  on a CPU it raises at once). Where the condition holds both do nothing, so on a run that passes the
  rewrite changes no value; where it fails, `RuntimeError` replaces `AssertionError`, and under `python -O`
  the check still runs. A computed message (f-string) would be evaluated on every call and is refused.
* `if <tensor condition>: raise E("literal")` (the branch only raises; no elif/else), e.g.
  `if not torch.isfinite(loss): raise RuntimeError("loss diverged")` -> `torch._assert_async(<the condition
  negated>, "literal")`, on the same terms.
* `torch.nonzero(m)` used only for its count (`len(...)`, `.shape[0]`, `.size(0)`) ->
  `int(torch.count_nonzero(m))`: the same number without the nonzero kernel, whose output size depends on
  the data (it waits for the device and then sizes its output).
"""
from __future__ import annotations

from typing import Optional

import libcst as cst
import libcst.matchers as m

from .base import Rewrite, add_imports, analyzed, code, enclosing_function, expr, node_index, qualified_names, \
    render, replace_nodes, start_line
from .loop_syntax import is_tensor_expr

GENERATOR = "device_checks"
_REDUCERS = ("all", "any")
_TORCH_REDUCERS = ("torch.all", "torch.any", "torch.isfinite", "torch.isnan", "torch.isinf", "torch.eq",
                   "torch.allclose")


def candidates(source: str, line: int) -> list:
    wrapper, meta = analyzed(source)
    module = wrapper.module
    out = []
    for node in node_index(module).of(cst.Assert):
        if start_line(meta, node) == line:
            r = _assert_async(meta, module, node)
            if r is not None:
                out.append(r)
    for node in node_index(module).of(cst.If):
        if start_line(meta, node) == line:
            r = _raise_check(meta, module, node)
            if r is not None:
                out.append(r)
    if not out:
        r = _count_nonzero(meta, module, line)
        if r is not None:
            out.append(r)
    return out


def _condition_tensor(meta, test) -> Optional[tuple]:
    """(receiver whose tensor-ness decides, proven reason or None) when `test` is a one-element tensor
    condition: `X.all()` / `X.any()` (no dim) or `torch.all(X)` / `torch.any(X)`."""
    if isinstance(test, cst.Call) and not test.args and isinstance(test.func, cst.Attribute) \
            and test.func.attr.value in _REDUCERS:
        return test.func.value, None
    if isinstance(test, cst.Call) and qualified_names(meta, test.func) & {"torch.all", "torch.any"} \
            and len(test.args) == 1 and test.args[0].keyword is None and not test.args[0].star:
        return test.args[0].value, "a torch.all/torch.any result is a one-element bool tensor"
    return None


def _assert_async(meta, module, node: cst.Assert) -> Optional[Rewrite]:
    cond = _condition_tensor(meta, node.test)
    if cond is None:
        return None
    if node.msg is not None and not isinstance(node.msg, (cst.SimpleString, cst.ConcatenatedString)):
        return None
    receiver, proven = cond
    function = enclosing_function(meta, node)
    if proven is None:
        why = _tensor_operand(meta, receiver, function, start_line(meta, node))
        proven = f"the condition reduces a tensor: {why}" if why else None
    args = code(node.test) + (f", {code(node.msg)}" if node.msg is not None else "")
    new_stmt = cst.Expr(expr(f"torch._assert_async({args})"))
    new_source = render(add_imports(replace_nodes(module, {node: new_stmt}, meta), [("torch", None)]))
    verified = ["the condition is `.all()`/`.any()` over the whole tensor (one element)",
                "the message is a literal (evaluating it eagerly reads nothing)"]
    needs = []
    if proven:
        verified.append(proven)
    else:
        needs.append(f"`{code(receiver)}` is a tensor (`_assert_async` takes a one-element tensor)")
    return Rewrite(new_source=new_source,
                   description=("Check the condition on the device with `torch._assert_async` instead of `assert`, "
                                "which reads the result to the host (a blocking sync) every call."),
                   auto_applicable=not needs, verified=verified, needs_verification=needs, generator=GENERATOR,
                   constraints=["a failing check raises RuntimeError (asynchronously on the NPU, at the next sync) "
                                "instead of AssertionError, and still runs under `python -O`"])


_EXCEPTIONS = ("RuntimeError", "ValueError", "AssertionError", "FloatingPointError", "ArithmeticError", "Exception")


def _raise_check(meta, module, node: cst.If) -> Optional[Rewrite]:
    """`if <tensor condition>: raise E("literal")` (nothing else in the branch, no elif/else) ->
    `torch._assert_async(<the negated condition>, "literal")`."""
    if node.orelse is not None or len(node.body.body) != 1 or not isinstance(node.body.body[0], cst.SimpleStatementLine):
        return None
    stmt = node.body.body[0].body
    if len(stmt) != 1 or not isinstance(stmt[0], cst.Raise) or stmt[0].cause is not None:
        return None
    exc = stmt[0].exc
    if not (m.matches(exc, m.Call(func=m.OneOf(*[m.Name(n) for n in _EXCEPTIONS])))
            and len(exc.args) <= 1 and all(a.keyword is None and not a.star
                                           and isinstance(a.value, (cst.SimpleString, cst.ConcatenatedString))
                                           for a in exc.args)):
        return None
    test = node.test
    negated = isinstance(test, cst.UnaryOperation) and isinstance(test.operator, cst.Not)
    cond = test.expression if negated else test
    function = enclosing_function(meta, node)
    why = _tensor_operand(meta, cond, function, start_line(meta, node))
    if not why and _condition_tensor(meta, cond) is None:
        return None
    holds = code(cond) if negated else f"torch.logical_not({code(cond)})"
    args = holds + (f", {code(exc.args[0].value)}" if exc.args else "")
    new_stmt = cst.SimpleStatementLine([cst.Expr(expr(f"torch._assert_async({args})"))],
                                       leading_lines=node.leading_lines,
                                       trailing_whitespace=node.body.header)
    new_source = render(add_imports(replace_nodes(module, {node: new_stmt}, meta), [("torch", None)]))
    name = exc.func.value
    verified = [f"the branch only raises {name} with a literal message",
                "where the condition does not hold both do nothing: no value changes"]
    needs = []
    if why:
        verified.append(f"the condition is a tensor: {why}")
    else:
        needs.append(f"`{code(cond)}` is a one-element tensor")
    return Rewrite(new_source=new_source,
                   description=("Check the condition on the device with `torch._assert_async` instead of `if ...: raise`, "
                                "whose test reads the tensor to the host (a blocking sync) every step."),
                   auto_applicable=not needs, verified=verified, needs_verification=needs, generator=GENERATOR,
                   constraints=[f"a failing check raises RuntimeError{'' if name == 'RuntimeError' else ' instead of ' + name}"
                                " (asynchronously on the NPU, at the next sync)"])


def _tensor_operand(meta, node, function, before: int) -> Optional[str]:
    """Why `node` is a tensor: a tensor expression, or a comparison/elementwise op whose operand is one."""
    why = is_tensor_expr(meta, node, function, before)
    if why:
        return why
    if isinstance(node, cst.Comparison):
        return _tensor_operand(meta, node.left, function, before)
    if isinstance(node, cst.BinaryOperation):
        return _tensor_operand(meta, node.left, function, before) or _tensor_operand(meta, node.right, function, before)
    if isinstance(node, cst.UnaryOperation):
        return _tensor_operand(meta, node.expression, function, before)
    if isinstance(node, cst.Call) and qualified_names(meta, node.func) & set(_TORCH_REDUCERS):
        return f"`{code(node)}` is a torch call"
    return None


def _nonzero_arg(meta, node) -> Optional[tuple]:
    """(mask, proven) when `node` is `torch.nonzero(mask)` (proven: a torch function takes a tensor) or
    `mask.nonzero()` (a numpy array's nonzero() is a tuple: proven only when mask is visibly a tensor)."""
    if not isinstance(node, cst.Call):
        return None
    if qualified_names(meta, node.func) & {"torch.nonzero"} and len(node.args) == 1 and node.args[0].keyword is None:
        return node.args[0].value, True
    if isinstance(node.func, cst.Attribute) and node.func.attr.value == "nonzero" and not node.args:
        return node.func.value, False
    return None


def _count_nonzero(meta, module, line: int) -> Optional[Rewrite]:
    index = node_index(module)
    for node in index.of(cst.Call, cst.Subscript):
        if start_line(meta, node) != line:
            continue
        inner = None
        if m.matches(node, m.Call(func=m.Name("len"), args=[m.Arg(keyword=None, star="")])):
            inner = node.args[0].value
        elif (isinstance(node, cst.Subscript) and m.matches(node.value, m.Attribute(attr=m.Name("shape")))
              and len(node.slice) == 1 and m.matches(node.slice[0].slice, m.Index(m.Integer("0")))):
            inner = node.value.value
        elif m.matches(node, m.Call(func=m.Attribute(attr=m.Name("size")), args=[m.Arg(value=m.Integer("0"), keyword=None)])):
            inner = node.func.value
        found = _nonzero_arg(meta, inner) if inner is not None else None
        if found is None:
            continue
        mask, proven = found
        function = enclosing_function(meta, node)
        why = "`torch.nonzero` takes a tensor" if proven else _tensor_operand(meta, mask, function, line)
        new_source = render(add_imports(replace_nodes(module, {node: expr(f"int(torch.count_nonzero({code(mask)}))")}, meta),
                                        [("torch", None)]))
        needs = [] if why else [f"`{code(mask)}` is a tensor (a numpy array's nonzero() is a tuple)"]
        return Rewrite(new_source=new_source,
                       description=(f"Count with `torch.count_nonzero({code(mask)})` instead of materializing "
                                    f"`nonzero()` only to take its length (a data-dependent output size: the host "
                                    f"waits for the device, then sizes the result)."),
                       auto_applicable=not needs, generator=GENERATOR, needs_verification=needs,
                       verified=[f"`{code(node)}` is the number of rows of nonzero(), i.e. of non-zero elements"]
                       + ([f"`{code(mask)}` is a tensor: {why}"] if why else []),
                       constraints=["the count still reaches the host (int()); keep it a tensor where the code "
                                    "after it accepts one to remove that sync too"])
    return None
