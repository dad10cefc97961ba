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

    The result of libcst's AddImportsVisitor, without it: constructing that visitor (and the gatherer it runs)
    introspects every matcher method, ~0.03 s each time, for an edit of the leading import block only.
    As there: only the imports before the first other statement (after a docstring) count as present; a
    `from X import ...` there gets the new names of X first; new statements follow the block (`import`s,
    then `from` imports, each sorted), with a blank line before the next statement."""
    body = list(module.body)
    start = end = 1 if _docstring_first(module) else 0
    while end < len(body) and _is_import_line(body[end]):
        end += 1
    modules, objects = set(), {}            # present: `import X` (no alias), `from X import Y` (no alias) / "*"
    for stmt in body[start:end]:
        imp = stmt.body[0]
        if isinstance(imp, cst.Import):
            modules |= {code(a.name) for a in imp.names if a.asname is None}
        elif _absolute_from(imp):
            names = {"*"} if isinstance(imp.names, cst.ImportStar) else {code(a.name) for a in imp.names if a.asname is None}
            objects.setdefault(code(imp.module), set()).update(names)
    new_modules = sorted({m for m, obj in imports if obj is None} - modules)
    new_objects = {}
    for mod, obj in imports:
        present = objects.get(mod, set())
        if obj is not None and obj not in present and "*" not in present:
            new_objects.setdefault(mod, set()).add(obj)
    if not new_modules and not new_objects:
        return module
    for k in range(start, end):
        imp = body[k].body[0]
        if _absolute_from(imp) and not isinstance(imp.names, cst.ImportStar) and code(imp.module) in new_objects:
            added = [cst.ImportAlias(name=cst.Name(n)) for n in sorted(new_objects.pop(code(imp.module)))]
            body[k] = body[k].with_changes(body=[imp.with_changes(names=added + list(imp.names))])
    if not new_modules and not new_objects:
        return module.with_changes(body=body)
    config = module.config_for_parsing
    statements = [cst.parse_statement(f"import {m}", config=config) for m in new_modules] + [
        cst.parse_statement(f"from {m} import {', '.join(sorted(names))}", config=config)
        for m, names in sorted(new_objects.items())]
    rest = body[end:]
    if rest and (not rest[0].leading_lines or rest[0].leading_lines[0].comment is not None):
        rest[0] = rest[0].with_changes(leading_lines=(cst.EmptyLine(), *rest[0].leading_lines))
    return module.with_changes(body=body[:end] + statements + rest)


_rendered: dict = {}       # (id(statement), indent, newline) -> (statement, its code), for one recommend() call


def render(module: cst.Module) -> str:
    """`module.code`, reusing the code of the top-level statements rendered before: every rewrite of a file is
    a new module sharing all but the statements it changed with the parse (libcst nodes are immutable), and
    rendering the whole file again for each rewrite was a fifth of the recommender's time."""
    if not scope_active() or not module.has_trailing_newline:
        return module.code
    parts = [module.code_for_node(n) for n in module.header]
    for stmt in module.body:
        key = (id(stmt), module.default_indent, module.default_newline)
        hit = _rendered.get(key)
        if hit is None or hit[0] is not stmt:
            hit = _rendered[key] = (stmt, module.code_for_node(stmt))
        parts.append(hit[1])
    parts += [module.code_for_node(n) for n in module.footer]
    return "".join(parts) or module.default_newline


def _absolute_from(imp) -> bool:
    return isinstance(imp, cst.ImportFrom) and not imp.relative and imp.module is not None


def _docstring_first(module: cst.Module) -> bool:
    """The module starts with a docstring or a `__strict__ = ...` flag: imports go after it."""
    if not module.body or not isinstance(module.body[0], cst.SimpleStatementLine) or len(module.body[0].body) != 1:
        return False
    first = module.body[0].body[0]
    return (isinstance(first, cst.Expr) and isinstance(first.value, cst.SimpleString)) or (
        isinstance(first, cst.Assign) and len(first.targets) == 1 and isinstance(first.targets[0].target, cst.Name)
        and first.targets[0].target.value == "__strict__")


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
    _rendered.clear()


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


def rewrites_at(source: str, line: int, node_type, build, accept=lambda node: True) -> list:
    """[the first rewrite `build(meta, module, node)` gives for a `node_type` node that starts at `line` and
    that `accept` takes], or [] -- how the one-statement generators find their candidate."""
    wrapper, meta = analyzed(source)
    module = wrapper.module
    for node in node_index(module).of(node_type):
        if start_line(meta, node) == line and accept(node):
            r = build(meta, module, node)
            if r is not None:
                return [r]
    return []


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
