"""What every codemod shares: parsing with metadata, line lookup, expression rendering, imports.

A codemod is a function `(source, line, ...) -> Rewrite | None` built on a libcst transformer: it
returns the whole new source plus the preconditions it checked, or None when the idiom is not at that
line. Codemods never do text substitution.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from collections import OrderedDict
from typing import Optional

import libcst as cst
from libcst.codemod import CodemodContext
from libcst.codemod.visitors import AddImportsVisitor
from libcst.codemod.visitors._add_imports import _skip_first
from libcst.metadata import MetadataWrapper, ParentNodeProvider, PositionProvider

from .scope import active as scope_active, on_scope_end


@dataclass
class Rewrite:
    """The result of one codemod on one file."""

    new_source: str
    description: str
    auto_applicable: bool
    constraints: list = field(default_factory=list)      # what the user must check (advice-only when not verified)
    verified: list = field(default_factory=list)         # preconditions checked syntactically / from shapes
    requires: list = field(default_factory=list)         # packages the new code imports (torch_npu, mx_driving)
    line: Optional[int] = None                           # where the finding should point, when not the first changed line
    # Preconditions the syntax cannot prove (iterations independent, operands broadcast like one iteration's,
    # shapes equal across a list): only the verification stage, run on the user's own tensors, proves them.
    # A rewrite with any is never auto-applicable until verified.
    needs_verification: list = field(default_factory=list)
    generator: Optional[str] = None                      # the candidate generator that made it
    # Whether the rewrite becomes auto-applicable once the verification stage verifies it. Default: a rewrite
    # with needs_verification does (a codemod lists them only when every static check held), one without
    # does when its static checks prove it (auto_applicable). A codemod sets False when something else
    # blocks it too.
    applicable_when_verified: Optional[bool] = None

    def __post_init__(self):
        if self.applicable_when_verified is None:
            self.applicable_when_verified = bool(self.needs_verification) or bool(self.auto_applicable)
        if self.needs_verification:
            self.auto_applicable = False


def wrap(source: str) -> MetadataWrapper:
    return MetadataWrapper(cst.parse_module(source))


def code(node: cst.CSTNode) -> str:
    return cst.Module(body=[]).code_for_node(node)


def expr(text: str) -> cst.BaseExpression:
    return cst.parse_expression(text)


def start_line(meta, node) -> int:
    return meta[PositionProvider][node].start.line


def end_line(meta, node) -> int:
    return meta[PositionProvider][node].end.line


def qualified_names(meta, node) -> set:
    """The qualified names a Name / Attribute chain can denote through the module's imports: after
    `import torch.nn as nn`, `nn.MaxPool2d` is {"torch.nn.MaxPool2d"}; a chain whose head no import binds
    has none. Every caller compares with imported APIs (torch.*, mmcv.*, scipy.*), so the imports are all
    that is needed -- libcst's QualifiedNameProvider resolved every scope of the file for this and was
    most of the recommender's time (1.0 of 2.6 s on the bundled example)."""
    parts = []
    while isinstance(node, cst.Attribute):
        parts.append(node.attr.value)
        node = node.value
    if not isinstance(node, cst.Name):
        return set()
    base = import_table(meta).get(node.value)
    if base is None:
        return set()
    return {".".join([base] + parts[::-1])}


def import_table(meta) -> dict:
    """bound name -> qualified name of every import in the module (`import a.b` binds `a`)."""
    table = meta.get("_imports") if isinstance(meta, dict) else None
    if table is not None:
        return table
    table = {}
    module = meta.wrapper.module
    for node in node_index(module).of(cst.Import, cst.ImportFrom):
        if isinstance(node, cst.Import):
            for a in node.names:
                name = code(a.name)
                if a.asname is not None and isinstance(a.asname.name, cst.Name):
                    table[a.asname.name.value] = name
                else:
                    table.setdefault(name.split(".", 1)[0], name.split(".", 1)[0])
        elif not isinstance(node.names, cst.ImportStar):
            prefix = "." * len(node.relative) + (code(node.module) if node.module is not None else "")
            for a in node.names:
                bound = a.asname.name.value if a.asname is not None and isinstance(a.asname.name, cst.Name) \
                    else code(a.name)
                table[bound] = f"{prefix}.{code(a.name)}" if prefix and not prefix.endswith(".") else prefix + code(a.name)
    meta["_imports"] = table
    return table


def names_in(node: cst.CSTNode) -> set:
    """Every bare Name referenced anywhere inside `node`."""
    found = set()

    class _V(cst.CSTVisitor):
        def visit_Name(self, n: cst.Name) -> None:
            found.add(n.value)

    node.visit(_V())
    return found


def add_imports(module: cst.Module, imports: list) -> cst.Module:
    """Add `import X` (("X", None)) or `from X import Y` (("X", "Y")) unless already present.

    Same result as running libcst's AddImportsVisitor over the module, without its two whole-tree passes:
    the visitor only reads and changes the leading import block (module.body), so it is run on that."""
    context = CodemodContext()
    for mod, obj in imports:
        AddImportsVisitor.add_needed_import(context, mod, obj)
    visitor = AddImportsVisitor(context)
    body = list(module.body)
    start = end = 1 if _skip_first(module) else 0
    while end < len(body) and _is_import_line(body[end]):
        end += 1
    # The gatherer stops at the first statement that is not an import: give it only the block before it.
    visitor.visit_Module(module.with_changes(body=body[:end]))
    for k in range(start, end):
        stmt = body[k]
        if isinstance(stmt.body[0], cst.ImportFrom):
            merged = visitor.leave_ImportFrom(stmt.body[0], stmt.body[0])
            if merged is not stmt.body[0]:
                body[k] = stmt.with_changes(body=[merged])
    return visitor.leave_Module(module, module.with_changes(body=body))


def _is_import_line(stmt) -> bool:
    return (isinstance(stmt, cst.SimpleStatementLine) and len(stmt.body) == 1
            and isinstance(stmt.body[0], (cst.Import, cst.ImportFrom)))


def enclosing_function(meta, node) -> Optional[cst.FunctionDef]:
    parents = meta[ParentNodeProvider]
    cur = node
    while cur in parents:
        cur = parents[cur]
        if isinstance(cur, cst.FunctionDef):
            return cur
    return None


def resolve(wrapper: MetadataWrapper):
    """The metadata mapping codemods use (positions, parents), each resolved on first use."""
    return LazyMetadata(wrapper)


class LazyMetadata(dict):
    """provider -> {node: value}, resolved when first asked for. Positions and parents are needed by every
    codemod; parents come from the node index's one pass. (Qualified names: `qualified_names`, from the
    imports.)"""

    def __init__(self, wrapper: MetadataWrapper, index=None):
        super().__init__()
        self.wrapper = wrapper
        self.index = index      # () -> NodeIndex of wrapper.module, whose one pass also records the parents

    def __missing__(self, provider):
        if provider is ParentNodeProvider and self.index is not None:
            self[provider] = self.index().parents
        else:
            self.update(self.wrapper.resolve_many((provider,)))
        return dict.__getitem__(self, provider)


class NodeIndex:
    """Every node of a module in pre-order (the order a visitor meets them), and the same grouped by type:
    one pass per file instead of one visitor pass per matcher and codemod."""

    def __init__(self, module: cst.Module):
        self.preorder = []
        self.parents = {}       # node -> parent node, as libcst's ParentNodeProvider maps them
        module.visit(_Collect(self.preorder, self.parents))
        self.by_type = {}
        for node in self.preorder:
            self.by_type.setdefault(type(node), []).append(node)

    def of(self, *types) -> list:
        """Nodes of these types, in pre-order."""
        if len(types) == 1:
            return self.by_type.get(types[0], [])
        return [n for n in self.preorder if isinstance(n, types)]


class _Collect(cst.CSTVisitor):
    def __init__(self, out: list, parents: dict):
        super().__init__()
        self.out, self.parents, self.stack = out, parents, []

    def on_visit(self, node) -> bool:
        self.out.append(node)
        if self.stack:
            self.parents[node] = self.stack[-1]
        self.stack.append(node)
        return True

    def on_leave(self, original_node) -> None:
        self.stack.pop()


class _Analysis:
    """One source text: its module, metadata (lazy) and node index (lazy)."""

    def __init__(self, source: str):
        self.module = cst.parse_module(source)
        self.wrapper = MetadataWrapper(self.module, unsafe_skip_copy=True)   # just parsed: nobody else holds it
        self.meta = LazyMetadata(self.wrapper, lambda: self.index)
        self._index = None

    @property
    def index(self) -> NodeIndex:
        if self._index is None:
            self._index = NodeIndex(self.module)
        return self._index


# Analyses keyed by the source text. Inside `analysis_scope()` (one recommend() call) every file is parsed
# and resolved once and kept until the scope ends; outside, the last UNSCOPED_CACHE_SIZE are kept.
UNSCOPED_CACHE_SIZE = 16
_cache: "OrderedDict[str, _Analysis]" = OrderedDict()
_by_module: dict = {}          # id(module) -> _Analysis, for helpers that get a module rather than its source


def _clear() -> None:
    _cache.clear()
    _by_module.clear()


on_scope_end(_clear)


def analysis(source: str) -> _Analysis:
    found = _cache.get(source)
    if found is not None:
        _cache.move_to_end(source)
        return found
    found = _Analysis(source)
    _cache[source] = found
    _by_module[id(found.module)] = found
    while not scope_active() and len(_cache) > UNSCOPED_CACHE_SIZE:
        _, old = _cache.popitem(last=False)
        _by_module.pop(id(old.module), None)
    return found


def analyzed(source: str):
    """(MetadataWrapper, metadata) of `source`, cached: the recommender runs several matchers and codemods
    over the same file, and metadata resolution dominates their cost. libcst trees are immutable."""
    a = analysis(source)
    return a.wrapper, a.meta


def parsed(source: str) -> cst.Module:
    return analysis(source).module


def node_index(module: cst.Module) -> NodeIndex:
    """The node index of a module parsed by `analysis()`, else a fresh one."""
    a = _by_module.get(id(module))
    if a is not None and a.module is module:
        return a.index
    return NodeIndex(module)


class _ReplaceNodes(cst.CSTTransformer):
    """Replace nodes by identity in one pass (several deep_replace calls would lose the later targets,
    which belong to the tree before the first replacement). With `descend` (ids of the targets'
    ancestors) only the path down to the targets is visited, not the whole tree."""

    def __init__(self, mapping: dict, descend: Optional[set] = None):
        super().__init__()
        self.mapping = {id(k): v for k, v in mapping.items()}
        self.descend = descend

    def on_visit(self, node) -> bool:
        return self.descend is None or id(node) in self.descend

    def on_leave(self, original_node, updated_node):
        return self.mapping.get(id(original_node), updated_node)


def replace_nodes(module: cst.Module, mapping: dict, meta=None) -> cst.Module:
    """`module` with each key node of `mapping` replaced by its value. With `meta` (the module's metadata)
    only the targets' ancestors are rebuilt."""
    if not mapping:
        return module
    descend = None
    if meta is not None:
        parents = meta[ParentNodeProvider]
        descend = set()
        for node in mapping:
            cur = node
            while cur in parents:
                cur = parents[cur]
                if id(cur) in descend:
                    break
                descend.add(id(cur))
        descend.add(id(module))
    return module.visit(_ReplaceNodes(mapping, descend))
