"""Voxel pooling written as one accumulating scatter (the pure-PyTorch arm of a `bev_pool` dispatch, LSS /
BEVFusion camera branches): the point features are summed into the cells of a flattened BEV grid,
`out.index_put_((b * H * W + y * W + x,), feats, accumulate=True)` (or `index_add_` / `scatter_add_` along
dim 0, or `index_put_` with a tuple of at least three cell-index tensors). What makes it voxel pooling is
the index: a linearized cell index over at least three coordinates (batch, z, y, x), with a stride. A
scatter by another index (class labels, `unique` inverses) or of a constant (a count per cell) is not it.
"""
from __future__ import annotations

import ast

from .pyast import SourceFile, last_name

ACCUMULATING = ("index_put_", "index_put", "index_add_", "index_add", "scatter_add_", "scatter_add")
# Wrappers that keep an index what it is (`flat.long()`, `flat[:, None].expand(-1, C)`).
INDEX_WRAPPERS = ("long", "int", "to", "view", "reshape", "flatten", "unsqueeze", "expand", "expand_as", "type")
CONSTANT_SOURCES = ("ones", "ones_like", "new_ones", "full", "full_like", "new_full")


def _unwrap(node):
    while True:
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in INDEX_WRAPPERS:
            node = node.func.value
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and _is_new_axis(node.slice):
            node = node.value
        else:
            return node


def _is_new_axis(s) -> bool:
    parts = s.elts if isinstance(s, ast.Tuple) else [s]
    return all(isinstance(p, ast.Slice) or isinstance(p, ast.Constant) and p.value is None for p in parts)


def _terms(node) -> list:
    """The summands of a linearized index: `b*H*W + y*W + x` -> 3, Horner `((b*Z + z)*Y + y)*X + x` -> 4."""
    node = _unwrap(node)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _terms(node.left) + _terms(node.right)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mult):
        for side in (node.left, node.right):
            inner = _unwrap(side)
            if isinstance(inner, ast.BinOp) and isinstance(inner.op, ast.Add):
                return _terms(inner)
    return [node]


def _is_cell_index(node, bound: dict, depth: int = 0) -> bool:
    node = _unwrap(node)
    if isinstance(node, ast.Name) and node.id in bound and depth < 3:
        return _is_cell_index(bound[node.id], bound, depth + 1)
    terms = _terms(node)
    return len(terms) >= 3 and not any(isinstance(t, ast.Constant) for t in terms) and any(
        isinstance(b, ast.BinOp) and isinstance(b.op, ast.Mult) for b in ast.walk(node))


def _constant_source(node) -> bool:
    """A count, not features: `torch.ones_like(x)`, `x.new_ones(n)`, a number."""
    return isinstance(node, ast.Constant) or isinstance(node, ast.Call) and last_name(node) in CONSTANT_SOURCES


def _kw(call, name):
    return next((k.value for k in call.keywords if k.arg == name), None)


def _accumulating_scatter(call: ast.Call):
    """(index nodes, source) of an accumulating scatter along dim 0, else None."""
    name = last_name(call)
    if name not in ACCUMULATING or not isinstance(call.func, ast.Attribute):
        return None
    args = call.args
    if name.startswith("index_put"):
        acc = args[2] if len(args) > 2 else _kw(call, "accumulate")
        if not (isinstance(acc, ast.Constant) and acc.value is True) or not args:
            return None
        index = args[0]
        source = args[1] if len(args) > 1 else _kw(call, "values")
        parts = index.elts if isinstance(index, (ast.Tuple, ast.List)) else None
        return (parts, source) if parts is not None else None
    dim = args[0] if args else _kw(call, "dim")
    if not (isinstance(dim, ast.Constant) and dim.value == 0):
        return None
    index = args[1] if len(args) > 1 else _kw(call, "index")
    source = args[2] if len(args) > 2 else _kw(call, "source" if name.startswith("index_add") else "src")
    return ([index], source) if index is not None else None


def bev_splat_matches(sf: SourceFile, fn, local: list) -> list:
    """`local`: the nodes of `fn`'s body (not nested defs)."""
    bound = {}
    for n in sorted((n for n in local if isinstance(n, ast.Assign)), key=lambda n: (n.lineno, n.col_offset)):
        if len(n.targets) == 1 and isinstance(n.targets[0], ast.Name):
            bound[n.targets[0].id] = n.value
    out = []
    for call in (n for n in local if isinstance(n, ast.Call)):
        found = _accumulating_scatter(call)
        if found is None:
            continue
        parts, source = found
        if source is None or _constant_source(source):
            continue
        cell = (len(parts) == 1 and _is_cell_index(parts[0], bound)) or (
            len(parts) >= 3 and not any(isinstance(p, (ast.Slice, ast.Constant)) for p in parts))
        if cell:
            out.append(("bev_splat", call, "fused_ops.bev_pool_v3",
                        "point features summed into the cells of a flattened BEV grid by an accumulating scatter"))
    return out[:1]
