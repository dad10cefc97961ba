"""Call-site rewrites to mx_driving fused operators (rules NPA8xx).

Argument mapping comes from the catalog (`fused_ops.<key>.replaces[*]`): the replaced API's parameters
are bound from the call (positional and keyword), mapped onto the fused op's parameters, dropped
(`im2col_step`, `interval_starts`...) or derived (`level_start_index` from `spatial_shapes`), and the
fused op is called with positional arguments in its own order.
"""
from __future__ import annotations

from typing import Optional

import libcst as cst
import libcst.matchers as m

from ..catalog import FusedOp, Replaces, load
from .base import Rewrite, add_imports, analyzed, code, expr, node_index, qualified_names, render, replace_nodes, start_line


def callee_text(call: cst.Call) -> str:
    """`name` for f(...), `Obj.attr` for Obj.attr(...) (last two components), else ""."""
    f = call.func
    if isinstance(f, cst.Name):
        return f.value
    if isinstance(f, cst.Attribute):
        inner = f.value
        if isinstance(inner, cst.Name):
            return f"{inner.value}.{f.attr.value}"
        if isinstance(inner, cst.Attribute):
            return f"{inner.attr.value}.{f.attr.value}"
        return f.attr.value
    return ""


def replacement_for(call: cst.Call, fused_keys=None) -> Optional[tuple]:
    """(FusedOp, Replaces) when the call is one the catalog maps onto a fused op with an argument map."""
    return load().replacement_for_callee(callee_text(call), fused_keys)


def bind_arguments(call: cst.Call, signature: tuple) -> Optional[dict]:
    """Parameter name -> argument expression for a call of a function with `signature`; None if the
    call uses *args/**kwargs or names a parameter the signature lacks."""
    bound = {}
    for i, a in enumerate(call.args):
        if a.star:
            return None
        if a.keyword is None:
            if i >= len(signature):
                return None
            bound[signature[i]] = a.value
        else:
            if a.keyword.value not in signature or a.keyword.value in bound:
                return None
            bound[a.keyword.value] = a.value
    return bound


def remap_call(call: cst.Call, op: FusedOp, rep: Replaces) -> Optional[tuple]:
    """(new Call of the fused op, fused parameter -> source text, derived parameters) or None."""
    bound = bind_arguments(call, rep.signature)
    if bound is None:
        return None
    inverse = {dst: src for src, dst in rep.argument_map.items()}
    args, mapping, derived = [], {}, []
    for param in op.signature:
        src = inverse.get(param)
        if src is not None and src in bound:
            value = bound[src]
        elif param in rep.derive:
            fmt = {p: code(bound[inverse[p]]) for p in op.signature if inverse.get(p) in bound}
            try:
                value = expr(rep.derive[param].format(**fmt))
            except KeyError:
                return None
            derived.append(param)
        elif src is not None:
            return None     # a parameter with a default in the replaced API: not handled, stay advice
        else:
            break           # trailing fused-op parameters with defaults are left out
        mapping[param] = code(value)
        args.append(cst.Arg(value=value))
    for src in bound:
        if src not in rep.argument_map and src not in rep.drop:
            return None
    new_call = cst.Call(func=expr(op.qualified), args=_comma_separated(args))
    return new_call, mapping, derived


def _comma_separated(args: list) -> list:
    return [a.with_changes(comma=cst.Comma(whitespace_after=cst.SimpleWhitespace(" "))) if i < len(args) - 1 else a
            for i, a in enumerate(args)]


def _calls_on_line(meta, module, line: int, keys) -> list:
    out = []
    for node in node_index(module).of(cst.Call):
        if start_line(meta, node) == line:
            r = replacement_for(node, keys)
            if r is not None:
                out.append((node, r))
    return out


def rewrite_fused_call(source: str, line: int, keys=None, shape_checks: Optional[dict] = None) -> Optional[Rewrite]:
    """Rewrite the first call on `line` that the catalog maps onto a fused op (limited to `keys`).

    `shape_checks`: {"verified": [...], "violations": [...]} from recorded shapes; the rewrite is
    auto-applicable only when every shape limit of the op was verified and none violated.
    """
    wrapper, meta = analyzed(source)
    module = wrapper.module
    for call, (op, rep) in _calls_on_line(meta, module, line, keys):
        remapped = remap_call(call, op, rep)
        if remapped is None:
            continue
        new_call, mapping, derived = remapped
        new_module = replace_nodes(module, {call: new_call}, meta)
        new_source = render(add_imports(new_module, [(op.module, None)] + ([("torch", None)] if derived else [])))
        dropped = [p for p in rep.drop if p in (bind_arguments(call, rep.signature) or {})]
        verified = ["arguments mapped by the catalog: " + ", ".join(f"{k}={v}" for k, v in mapping.items())]
        constraints = [f"needs {op.module} installed (import {op.module})"]
        if dropped:
            verified.append("dropped: " + ", ".join(dropped))
        if derived:
            verified.append("derived from spatial_shapes: " + ", ".join(derived))
        checks = shape_checks or {}
        verified += checks.get("verified", [])
        constraints += checks.get("violations", [])
        constraints += [c for c in op.constraints if c not in checks.get("covered", ())]
        auto = bool(checks.get("complete")) and not checks.get("violations")
        return Rewrite(
            new_source=new_source,
            description=(f"Replace `{callee_text(call)}(...)` with the fused `{op.qualified}` "
                         f"({', '.join(op.signature)})."),
            auto_applicable=auto, constraints=constraints, verified=verified, requires=[op.module])
    return None


# ---------------------------------------------------------------------------------------------
# ResNet add + relu
# ---------------------------------------------------------------------------------------------
RELU_QUALIFIED = ("torch.relu", "torch.nn.functional.relu", "torch.relu_", "torch.nn.functional.relu_")


def _is_relu_of(meta, value, var: str) -> bool:
    if not m.matches(value, m.Call(args=[m.Arg(value=m.Name(var), keyword=None)])) \
            and not m.matches(value, m.Call(args=[m.Arg(value=m.Name(var), keyword=None), m.Arg(keyword=m.Name("inplace"))])):
        return False
    f = value.func
    # self.relu(out) / self.act_relu(out): a module attribute named as a ReLU (checked first: it needs no
    # qualified names, whose resolution is the expensive part)
    if m.matches(f, m.Attribute(value=m.Name("self"))) and "relu" in f.attr.value.lower():
        return True
    return bool(qualified_names(meta, f) & set(RELU_QUALIFIED))


def find_add_relu(source: str) -> list:
    """(line of `out += identity`, out, identity) for every add-then-relu pair in `source`."""
    wrapper, meta = analyzed(source)
    return [(start_line(meta, blk.body[k]), a, b) for blk, k, a, b in _add_relu_pairs(meta, wrapper.module)]


def _add_relu_pairs(meta, module) -> list:
    out = []
    for node in node_index(module).of(cst.IndentedBlock):
        body = node.body
        for k in range(len(body) - 1):
            s1, s2 = body[k], body[k + 1]
            if not (isinstance(s1, cst.SimpleStatementLine) and isinstance(s2, cst.SimpleStatementLine)
                    and len(s1.body) == 1 and len(s2.body) == 1):
                continue
            a1, a2 = s1.body[0], s2.body[0]
            if not m.matches(a1, m.AugAssign(target=m.Name(), operator=m.AddAssign(), value=m.Name())):
                continue
            var, other = a1.target.value, a1.value.value
            if (m.matches(a2, m.Assign(targets=[m.AssignTarget(target=m.Name(var))]))
                    and _is_relu_of(meta, a2.value, var)):
                out.append((node, k, var, other))
    return out


def rewrite_add_relu(source: str, line: int, shapes_equal: Optional[str] = None) -> Optional[Rewrite]:
    """`out += identity` (on `line`) + `out = relu(out)` -> `out = mx_driving.npu_add_relu(out, identity)`.

    `shapes_equal`: how the recorded shapes showed both operands have the same shape, if they did.
    """
    wrapper, meta = analyzed(source)
    module = wrapper.module
    for block, k, var, other in _add_relu_pairs(meta, module):
        if start_line(meta, block.body[k]) not in (line, line - 1) and start_line(meta, block.body[k + 1]) != line:
            continue
        op = load().fused_ops["npu_add_relu"]
        new_stmt = cst.parse_statement(f"{var} = {op.qualified}({var}, {other})\n").with_changes(
            leading_lines=block.body[k].leading_lines)
        new_block = block.with_changes(body=list(block.body[:k]) + [new_stmt] + list(block.body[k + 2:]))
        new_source = render(add_imports(replace_nodes(module, {block: new_block}, meta), [(op.module, None)]))
        verified = [f"`{var} += {other}` is directly followed by `{var} = relu({var})`"]
        constraints = [f"needs {op.module} installed (import {op.module})"]
        if shapes_equal:
            verified.append(shapes_equal)
        constraints += [c for c in op.constraints if not (shapes_equal and "same shape" in c)]
        return Rewrite(
            new_source=new_source,
            description=(f"Fuse the residual add and ReLU: `{var} = {op.qualified}({var}, {other})` launches one "
                         f"kernel instead of two."),
            auto_applicable=bool(shapes_equal), constraints=constraints, verified=verified, requires=[op.module])
    return None
