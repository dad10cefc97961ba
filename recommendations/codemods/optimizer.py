"""torch.optim.{AdamW,Adam,SGD,...} -> torch_npu.optim.NpuFused* (rule NPA601), in code and in mmcv/mmengine
config dicts (`optimizer = dict(type='AdamW', ...)`, `optim_wrapper = dict(optimizer=dict(type='AdamW'))`).

Calls are matched by qualified name, so `torch.optim.AdamW`, `from torch.optim import AdamW` and
`optim.AdamW` are the same thing. The fused optimizers take the same leading parameters with the same
defaults (catalog `optimizers`), so a call using only those is rewritten as-is.
"""
from __future__ import annotations

from typing import Optional

import libcst as cst
import libcst.matchers as m

from ..catalog import load
from .base import Rewrite, add_imports, analyzed, code, expr, node_index, qualified_names, render, replace_nodes, start_line

TORCH_ONLY_KWARGS = ("foreach", "fused", "capturable", "differentiable", "maximize")


def _optimizer_calls(meta, module: cst.Module) -> list:
    """(call, catalog Optimizer) for every torch.optim constructor call the catalog can replace."""
    by_qname = {o.torch: o for o in load().optimizers.values()}
    out = []
    for node in node_index(module).of(cst.Call):
        for q in qualified_names(meta, node.func):
            if q in by_qname:
                out.append((node, by_qname[q]))
                break
    return out


def find_optimizer_calls(source: str) -> list:
    """(line, torch optimizer name) of every replaceable optimizer constructor in `source`."""
    wrapper, meta = analyzed(source)
    return [(start_line(meta, c), o.name) for c, o in _optimizer_calls(meta, wrapper.module)]


def rewrite_optimizer(source: str, line: Optional[int] = None, name: Optional[str] = None) -> Optional[Rewrite]:
    """Rewrite the optimizer constructor on `line` (or the first one of type `name`, or the first one)."""
    wrapper, meta = analyzed(source)
    calls = _optimizer_calls(meta, wrapper.module)
    if line is not None:
        calls = [c for c in calls if start_line(meta, c[0]) == line] or calls
    if name is not None:
        calls = [c for c in calls if c[1].name == name] or calls
    if not calls:
        return None
    call, opt = calls[0]
    new_call = call.with_changes(func=expr(opt.replacement))
    new_module = replace_nodes(wrapper.module, {call: new_call}, meta)
    new_source = render(add_imports(new_module, [("torch_npu", None)]))
    cat = load()
    positional = [a for a in call.args if a.keyword is None and not a.star]
    keywords = [a.keyword.value for a in call.args if a.keyword is not None]
    unsupported = [k for k in keywords if k not in opt.signature]
    starred = any(a.star for a in call.args)
    verified, constraints = [], list(cat.optimizer_constraints)
    if not unsupported and not starred and len(positional) <= len(opt.signature):
        verified.append(f"every argument of `{opt.name}(...)` is a parameter of `{opt.replacement}` "
                        f"({', '.join(opt.signature)}) with the same default")
    else:
        constraints.insert(0, "arguments the fused optimizer does not take: "
                           + ", ".join(unsupported or ["*args/**kwargs"]))
    return Rewrite(
        new_source=new_source,
        description=(f"Use `{opt.replacement}` instead of `{code(call.func)}`: one fused kernel updates all "
                     f"parameters instead of several small ops per parameter tensor."),
        auto_applicable=not unsupported and not starred and len(positional) <= len(opt.signature),
        constraints=constraints, verified=verified, requires=["torch_npu"])


def _config_type_strings(module: cst.Module) -> list:
    """(SimpleString node, optimizer name) for `type='AdamW'` inside an optimizer config dict."""
    names = load().optimizers
    out = []

    def optimizer_dict(call: cst.Call):
        for a in call.args:
            if a.keyword is not None and a.keyword.value == "type" and isinstance(a.value, cst.SimpleString):
                v = a.value.evaluated_value
                if v in names:
                    out.append((a.value, v))

    for node in node_index(module).of(cst.Assign, cst.Arg):
        if isinstance(node, cst.Assign):
            if (len(node.targets) == 1 and m.matches(node.targets[0].target, m.Name("optimizer"))
                    and m.matches(node.value, m.Call(func=m.Name("dict")))):
                optimizer_dict(node.value)
        elif (node.keyword is not None and node.keyword.value == "optimizer"
                and m.matches(node.value, m.Call(func=m.Name("dict")))):
            optimizer_dict(node.value)
    return out


def find_config_optimizers(source: str) -> list:
    wrapper, meta = analyzed(source)
    return [(start_line(meta, s), name) for s, name in _config_type_strings(wrapper.module)]


def rewrite_config_optimizer(source: str) -> Optional[Rewrite]:
    wrapper, meta = analyzed(source)
    found = _config_type_strings(wrapper.module)
    if not found:
        return None
    opt_names = load().optimizers
    mapping = {}
    for node, name in found:
        quote = node.value[0] if node.value[0] in "'\"" else "'"
        mapping[node] = cst.SimpleString(f"{quote}{opt_names[name].config_type}{quote}")
    module = replace_nodes(wrapper.module, mapping, meta)
    names = sorted({n for _, n in found})
    return Rewrite(
        new_source=render(module),
        description=("Use the torch_npu fused optimizer in the config: "
                     + ", ".join(f"type='{n}' -> '{opt_names[n].config_type}'" for n in names) + "."),
        auto_applicable=True,
        constraints=["needs torch_npu and an mmcv/mmengine build for the NPU that registers the NpuFused optimizers"]
                    + list(load().optimizer_constraints[1:]),
        verified=["only the optimizer `type` string changes; the other keys are passed through unchanged"],
        requires=["torch_npu"])
