"""Rewrites of ops that fall back to the host CPU on the NPU (rule NPA401) into NPU-supported compositions.

`torch.logdet(x)` -> `torch.linalg.svdvals(x).log().sum(-1)`: |det x| is the product of the singular
values, batched over the leading dimensions (unlike the seed's printed version, which multiplies the
singular values of the whole batch together). It equals logdet when det x > 0 -- always for covariance
(symmetric positive-definite) matrices; for det x < 0 logdet is NaN while the rewrite gives log|det|.
`torch.linalg.slogdet(x)[1]` / `.logabsdet` is log|det x| for every matrix, so that rewrite is exact.
"""
from __future__ import annotations

from typing import Optional

import libcst as cst
import libcst.matchers as m

from .base import (Rewrite, analyzed, code, enclosing_function, expr, node_index, qualified_names, render, replace_nodes,
                   start_line)

LOGDET_APIS = ("torch.logdet", "torch.linalg.logdet")
SLOGDET_APIS = ("torch.slogdet", "torch.linalg.slogdet")
# An argument whose name says it holds covariance matrices is positive-definite by construction.
COVARIANCE_HINTS = ("cov", "sigma", "precision")


def _svd_logabsdet(arg: cst.BaseExpression) -> cst.BaseExpression:
    return expr(f"torch.linalg.svdvals({code(arg)}).log().sum(-1)")


def _single_arg(call: cst.Call) -> Optional[cst.BaseExpression]:
    if len(call.args) == 1 and call.args[0].star == "" and call.args[0].keyword in (None,) \
            or (len(call.args) == 1 and call.args[0].keyword is not None and call.args[0].keyword.value in ("input", "A")):
        return call.args[0].value
    return None


def rewrite_logdet(source: str, line: int) -> Optional[Rewrite]:
    """Rewrite the first logdet / slogdet()[1] call on `line`."""
    wrapper, meta = analyzed(source)
    module = wrapper.module
    found = []
    # the nodes a visitor would meet, in its order, restricted to the line
    for node in node_index(module).of(cst.Call, cst.Subscript, cst.Attribute):
        if start_line(meta, node) != line:
            continue
        if isinstance(node, cst.Call):
            q = qualified_names(meta, node.func)
            arg = _single_arg(node)
            if q & set(LOGDET_APIS) and arg is not None:
                found.append(("logdet", node, node, arg))
            elif m.matches(node, m.Call(func=m.Attribute(attr=m.Name("logdet")), args=[])) and not q & set(LOGDET_APIS):
                found.append(("logdet", node, node, node.func.value))
        elif isinstance(node, cst.Subscript):
            if not isinstance(node.value, cst.Call):
                continue
            call = node.value
            if (qualified_names(meta, call.func) & set(SLOGDET_APIS) and _single_arg(call) is not None
                    and len(node.slice) == 1 and m.matches(node.slice[0].slice, m.Index(m.Integer("1") | m.UnaryOperation(operator=m.Minus(), expression=m.Integer("1"))))):
                found.append(("slogdet", node, call, _single_arg(call)))
        elif (node.attr.value == "logabsdet" and isinstance(node.value, cst.Call)
                and qualified_names(meta, node.value.func) & set(SLOGDET_APIS) and _single_arg(node.value) is not None):
            found.append(("slogdet", node, node.value, _single_arg(node.value)))
    if not found:
        return None
    kind, outer, call, arg = found[0]
    new_module = replace_nodes(module, {outer: _svd_logabsdet(arg)}, meta)
    from .base import add_imports
    new_source = render(add_imports(new_module, [("torch", None)]))
    arg_c = code(arg)
    if kind == "slogdet":
        return Rewrite(
            new_source=new_source,
            description=(f"Replace `{code(outer)}` (linalg_slogdet has no NPU kernel: it runs on the host with copies "
                         f"and a sync each way) with `torch.linalg.svdvals({arg_c}).log().sum(-1)`, which runs on the NPU."),
            auto_applicable=True,
            verified=["log|det x| is the sum of the logs of the singular values for every square matrix, batched"],
            constraints=["gradients through svdvals are exact for distinct singular values"])
    function = enclosing_function(meta, call)
    hint = next((h for h in COVARIANCE_HINTS if h in arg_c.lower()), None)
    verified, constraints = [], [
        f"`{arg_c}` must be positive-definite (det > 0), as covariance matrices are; for det < 0 logdet is NaN "
        "while the rewrite returns log|det|"]
    if hint:
        verified.append(f"the argument `{arg_c}` is named as a covariance/precision matrix (contains {hint!r}): "
                        "positive-definite by construction")
    return Rewrite(
        new_source=new_source,
        description=(f"Replace `{code(call)}` (linalg_slogdet has no NPU kernel: it runs on the host CPU with a "
                     f"device->host->device round trip and a sync) with `torch.linalg.svdvals({arg_c}).log().sum(-1)`, "
                     f"batched over the leading dimensions and supported on the NPU."
                     + (f" In `{function.name.value}`." if function is not None else "")),
        auto_applicable=bool(hint), constraints=constraints, verified=verified)


REWRITES = {"logdet_svdvals": rewrite_logdet}
