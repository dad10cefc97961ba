"""Candidate generator `masked_reductions`: the mean or sum of a boolean-masked selection, computed without
materializing the selection (whose size depends on the data: the host waits for the device to size it).

    torch.masked_select(x, m).mean()  ->  torch.where(m, x, 0).sum() / m.sum()
    torch.masked_select(x, m).sum()   ->  torch.where(m, x, 0).sum()
    x.masked_select(m).mean()         ->  the same

Equal up to float rounding (the sum runs over zeros where the mask is off), with the same gradients (zero
where the mask is off); an empty mask gives 0 / 0 = nan for the mean, as the mean of an empty selection
does, and 0 for the sum. `torch.where` broadcasts `x` and `m` as `masked_select` does; the count `m.sum()`
is the number of selected elements when `m` has the broadcast shape, which the verification stage shows
(the mean would differ otherwise). Refused: reductions with a `dim`, dtype or keyword arguments.
"""
from __future__ import annotations

from typing import Optional

import libcst as cst
import libcst.matchers as m

from .base import Rewrite, add_imports, code, expr, qualified_names, replace_nodes, rewrites_at

GENERATOR = "masked_reductions"


def candidates(source: str, line: int) -> list:
    return rewrites_at(source, line, cst.Call, _rewrite)


def _selection(meta, node) -> Optional[tuple]:
    """(x, m) of `torch.masked_select(x, m)` / `x.masked_select(m)`."""
    if not isinstance(node, cst.Call) or any(a.keyword is not None or a.star for a in node.args):
        return None
    if qualified_names(meta, node.func) & {"torch.masked_select"} and len(node.args) == 2:
        return node.args[0].value, node.args[1].value
    if m.matches(node.func, m.Attribute(attr=m.Name("masked_select"))) and len(node.args) == 1:
        return node.func.value, node.args[0].value
    return None


def _atom(node) -> str:
    text = code(node)
    return text if isinstance(node, (cst.Name, cst.Attribute, cst.Call, cst.Subscript)) else f"({text})"


def _rewrite(meta, module, node: cst.Call) -> Optional[Rewrite]:
    if not (m.matches(node.func, m.Attribute(attr=m.Name("mean") | m.Name("sum"))) and not node.args):
        return None
    sel = _selection(meta, node.func.value)
    if sel is None:
        return None
    x, mask = sel
    reducer = node.func.attr.value
    masked = f"torch.where({code(mask)}, {code(x)}, 0).sum()"
    new = expr(f"({masked} / {_atom(mask)}.sum())" if reducer == "mean" else masked)
    new_source = add_imports(replace_nodes(module, {node: new}, meta), [("torch", None)]).code
    needs = [] if reducer == "sum" else [f"`{code(mask)}` has the shape of `{code(x)}` (its sum is the number of "
                                         f"selected elements)"]
    needs.append(f"`{code(mask)}` is a bool tensor")
    return Rewrite(new_source=new_source,
                   description=(f"Take the {reducer} of the masked elements with `torch.where` instead of materializing "
                                f"`masked_select` (a data-dependent size: the host waits for the device to size it)."),
                   auto_applicable=True, generator=GENERATOR, needs_verification=needs,
                   verified=["`torch.where` broadcasts like `masked_select`; masked-off elements add zero to the sum and "
                             "get zero gradient",
                             "an empty mask gives nan for the mean (0 / 0) and 0 for the sum, as before"],
                   constraints=["float rounding of the sum may differ in the last bits (it also adds the zeros)"])
