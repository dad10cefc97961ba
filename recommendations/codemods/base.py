"""What every codemod shares: parsing with metadata, line lookup, expression rendering, imports.

A codemod is a function `(source, line, ...) -> Rewrite | None` built on a libcst transformer: it
returns the whole new source plus the preconditions it checked, or None when the idiom is not at that
line. Codemods never do text substitution.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Optional

import libcst as cst
from libcst.codemod import CodemodContext
from libcst.codemod.visitors import AddImportsVisitor
from libcst.metadata import MetadataWrapper, ParentNodeProvider, PositionProvider, QualifiedNameProvider


@dataclass
class Rewrite:
    """The result of one codemod on one file."""

    new_source: str
    description: str
    auto_applicable: bool
    constraints: list = field(default_factory=list)      # what the user must check (advice-only when not verified)
    verified: list = field(default_factory=list)         # preconditions checked syntactically / from shapes
    requires: list = field(default_factory=list)         # packages the new code imports (torch_npu, mx_driving)


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
    try:
        value = meta[QualifiedNameProvider][node]
    except KeyError:
        return set()
    if callable(value):  # libcst resolves this provider lazily
        value = value()
    return {q.name for q in value}


def names_in(node: cst.CSTNode) -> set:
    """Every bare Name referenced anywhere inside `node`."""
    found = set()

    class _V(cst.CSTVisitor):
        def visit_Name(self, n: cst.Name) -> None:
            found.add(n.value)

    node.visit(_V())
    return found


def add_imports(module: cst.Module, imports: list) -> cst.Module:
    """Add `import X` (("X", None)) or `from X import Y` (("X", "Y")) unless already present."""
    context = CodemodContext()
    for mod, obj in imports:
        AddImportsVisitor.add_needed_import(context, mod, obj)
    return AddImportsVisitor(context).transform_module(module)


def enclosing_function(meta, node) -> Optional[cst.FunctionDef]:
    parents = meta[ParentNodeProvider]
    cur = node
    while cur in parents:
        cur = parents[cur]
        if isinstance(cur, cst.FunctionDef):
            return cur
    return None


METADATA = (PositionProvider, ParentNodeProvider, QualifiedNameProvider)


def resolve(wrapper: MetadataWrapper):
    """The metadata mapping codemods use (positions, parents, qualified names)."""
    return wrapper.resolve_many(METADATA)


class _ReplaceNodes(cst.CSTTransformer):
    """Replace nodes by identity in one pass (several deep_replace calls would lose the later targets,
    which belong to the tree before the first replacement)."""

    def __init__(self, mapping: dict):
        super().__init__()
        self.mapping = mapping

    def on_leave(self, original_node, updated_node):
        if original_node in self.mapping:
            return self.mapping[original_node]
        return updated_node


def replace_nodes(module: cst.Module, mapping: dict) -> cst.Module:
    return module.visit(_ReplaceNodes(mapping)) if mapping else module


@lru_cache(maxsize=16)
def analyzed(source: str):
    """(MetadataWrapper, metadata) of `source`, cached: the recommender runs several matchers and codemods
    over the same file, and metadata resolution dominates their cost. libcst trees are immutable."""
    wrapper = wrap(source)
    return wrapper, resolve(wrapper)
