"""Read and parse the user's source files, once: the syntax facts analyzers tie trace findings to.

Analyzers ask "which loops enclose line N of file F" or "which function is it in"; this module answers
from Python's `ast` (line ranges are all that is needed) and caches text and trees per path. Files
that are missing or do not parse give empty answers, never errors: a trace may come from a machine
whose sources are not here.
"""
from __future__ import annotations

import ast
import os
import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional


@dataclass(frozen=True)
class LoopInfo:
    kind: str              # "for" | "while" | "comprehension" (a list/set/dict comprehension or generator)
    line: int              # header line
    end_line: int          # last line of the loop (body and else)
    body_first: int        # first line of the body
    body_last: int         # last line of the body
    iter_text: str         # `for`: the iterable's source; `while`: the condition's source
    targets: tuple         # names bound by a `for` target (("i", "ll") for `for i, ll in ...`); () for while
    node: ast.AST          # the ast.For / ast.While / comprehension node

    @property
    def body_lines(self) -> tuple:
        return (self.body_first, self.body_last)

    def contains(self, line: int) -> bool:
        return self.body_first <= line <= self.body_last


@dataclass(frozen=True)
class FunctionInfo:
    name: str
    line: int              # the `def` line
    end_line: int


@lru_cache(maxsize=512)
def _read(path: str) -> Optional[str]:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def read_source(path) -> Optional[str]:
    """The text of a source file, or None when it cannot be read."""
    return _read(str(path))


def source_lines(path) -> list:
    text = read_source(path)
    return text.splitlines() if text is not None else []


def line_text(path, line: int) -> str:
    lines = source_lines(path)
    return lines[line - 1] if 1 <= line <= len(lines) else ""


@lru_cache(maxsize=512)
def _tree(path: str):
    text = _read(path)
    if text is None:
        return None
    try:
        return ast.parse(text, filename=path)
    except (SyntaxError, ValueError):
        return None


def parse(path) -> Optional[ast.Module]:
    """The file's ast, or None when it is missing or not valid Python."""
    return _tree(str(path))


def function_at(tree: Optional[ast.Module], def_line: int, decorated: bool = False):
    """The (async) def whose `def` line is `def_line` -- or, with `decorated`, one of its decorator lines (a
    frame's line for a decorated function) --, None when there is none."""
    for node in ast.walk(tree) if tree is not None else ():
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and def_line in (
                node.lineno, *((d.lineno for d in node.decorator_list) if decorated else ())):
            return node
    return None


def _names(target: ast.AST) -> tuple:
    return tuple(n.id for n in ast.walk(target) if isinstance(n, ast.Name))


def _segment(path: str, node: ast.AST) -> str:
    """ast.get_source_segment without re-splitting the whole file on every call (columns are UTF-8 bytes)."""
    lines = _lines(path)
    first, last = node.lineno - 1, node.end_lineno - 1
    if getattr(node, "end_col_offset", None) is None or last >= len(lines):
        return ""
    if first == last:
        return lines[first].encode()[node.col_offset:node.end_col_offset].decode()
    head = lines[first].encode()[node.col_offset:].decode()
    tail = lines[last].encode()[:node.end_col_offset].decode()
    return "".join([head, *lines[first + 1:last], tail])


@lru_cache(maxsize=512)
def _lines(path: str) -> list:
    """The file's lines with their ends, split where Python's parser splits them (\\r\\n, \\r, \\n)."""
    text = _read(path) or ""
    out, start = [], 0
    for m in _LINE_END.finditer(text):
        out.append(text[start:m.end()])
        start = m.end()
    if start < len(text):
        out.append(text[start:])
    return out


_LINE_END = re.compile(r"\r\n|\r|\n")


def _chain(path, line: int) -> list:
    """Nodes enclosing `line`, outermost first (the module excluded)."""
    tree = parse(path)
    if tree is None:
        return []
    chain = []
    node = tree
    while True:
        inner = None
        for child in ast.iter_child_nodes(node):
            first = getattr(child, "lineno", None)
            last = getattr(child, "end_lineno", None)
            if first is None or last is None:
                continue
            # Decorators sit above a def's `lineno`; count them as part of it.
            decos = getattr(child, "decorator_list", None)
            if decos:
                first = min([first] + [d.lineno for d in decos])
            if first <= line <= last and isinstance(child, (ast.stmt, ast.excepthandler)):
                inner = child
                break
        if inner is None:
            return chain
        chain.append(inner)
        node = inner


_COMPREHENSIONS = (ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)


def _comprehension_at(stmt: ast.AST, line: int):
    """The outermost comprehension of `stmt` that spans `line` (not inside a nested def or lambda)."""
    todo = [stmt]
    while todo:
        node = todo.pop(0)
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
                continue
            if isinstance(child, _COMPREHENSIONS) and child.lineno <= line <= child.end_lineno:
                return child
            if isinstance(child, ast.expr) or not isinstance(child, ast.stmt):
                todo.append(child)
    return None


def enclosing_loops(path, line: int) -> list:
    """The `for`/`while` loops whose body (or header) holds `line`, innermost first; where there is none,
    the comprehension on the line's statement that spans it (a comprehension inside a loop statement is
    part of that loop's body, as its ops are).

    Stops at the nearest enclosing function or class: a loop around a `def` does not run the
    function's body once per iteration.
    """
    path = str(path)
    loops = []
    chain = _chain(path, line)
    for node in reversed(chain):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            break
        if isinstance(node, (ast.For, ast.AsyncFor, ast.While)):
            is_for = not isinstance(node, ast.While)
            loops.append(LoopInfo(
                kind="for" if is_for else "while", line=node.lineno, end_line=node.end_lineno,
                body_first=node.body[0].lineno, body_last=node.body[-1].end_lineno,
                iter_text=_segment(path, node.iter if is_for else node.test),
                targets=_names(node.target) if is_for else (), node=node))
    comp = _comprehension_at(chain[-1], line) if chain and not loops else None
    if comp is not None and not isinstance(chain[-1], (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        loops.append(LoopInfo(
            kind="comprehension", line=comp.lineno, end_line=comp.end_lineno, body_first=comp.lineno,
            body_last=comp.end_lineno, iter_text=_segment(path, comp.generators[0].iter),
            targets=tuple(n for g in comp.generators for n in _names(g.target)), node=comp))
    return loops


def enclosing_function(path, line: int) -> Optional[FunctionInfo]:
    for node in reversed(_chain(str(path), line)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return FunctionInfo(node.name, node.lineno, node.end_lineno)
    return None


def clear_cache():
    """Forget cached files (tests that rewrite a file in place)."""
    _read.cache_clear()
    _lines.cache_clear()
    _tree.cache_clear()
    _call_lines.cache_clear()
    _map_calls.cache_clear()
    _parameters.cache_clear()
    _call_passes.cache_clear()


# Folders that never hold the user's own code (VCS data, caches, environments, build copies).
SKIP_DIRS = frozenset({".git", ".hg", ".svn", "__pycache__", "venv", ".venv", "env", "site-packages", "dist-packages",
                       "node_modules", "build", "dist", ".tox", ".mypy_cache", ".pytest_cache", ".eggs"})


def python_files(root: Path, limit: int) -> list:
    """The project's .py files under `root` in a stable order, at most `limit`, skipping SKIP_DIRS and
    hidden folders."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        for f in sorted(filenames):
            if f.endswith(".py"):
                out.append(Path(dirpath) / f)
                if len(out) >= limit:
                    return out
    return out


@lru_cache(maxsize=4096)
def _call_lines(path: str, def_line: int, name: str) -> tuple:
    node = function_at(parse(path), def_line, decorated=True)
    if node is None:
        return ()
    sites, todo = set(), [(stmt, False) for stmt in node.body]
    while todo:
        sub, in_comprehension = todo.pop()
        if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue        # a nested def's calls run in its own frame
        if isinstance(sub, ast.Call):
            f = sub.func
            if (isinstance(f, ast.Name) and f.id == name) or (isinstance(f, ast.Attribute) and f.attr == name):
                sites.add((sub.lineno, in_comprehension))
        inner = in_comprehension or isinstance(sub, _COMPREHENSIONS)
        todo.extend((child, inner) for child in ast.iter_child_nodes(sub))
    return tuple(sorted(sites))


def call_lines(path, def_line: int, name: str) -> tuple:
    """(line, inside a comprehension) of every call of something named `name` (`name(...)`, `obj.name(...)`)
    in the function defined at `def_line`, not counting nested defs and lambdas; () when there is no such
    function."""
    return _call_lines(str(path), def_line, name)


@dataclass(frozen=True)
class MapCall:
    """A `map(f, *iterables)` call: f's name (`f`, `obj.f`, `partial(f, ...)`, or the one function a
    `lambda *a: f(*a, ...)` calls), and the lambda's line when f is a lambda."""
    line: int
    end_line: int
    target: Optional[str]      # the mapped function's name; None when it cannot be named
    lambda_line: Optional[int]
    iter_text: str             # the iterables' source, comma-separated


_PARTIALS = ("partial",)       # functools.partial / partial


def _callable_name(node) -> Optional[str]:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _mapped_name(node) -> tuple:
    """(name, lambda line) of map's first argument."""
    if isinstance(node, ast.Lambda):
        body = node.body
        return (_callable_name(body.func) if isinstance(body, ast.Call) else None), node.lineno
    if isinstance(node, ast.Call) and _callable_name(node.func) in _PARTIALS and node.args:
        return _callable_name(node.args[0]), None
    return _callable_name(node), None


@lru_cache(maxsize=1024)
def _map_calls(path: str, def_line: int) -> tuple:
    node = function_at(parse(path), def_line, decorated=True)
    if node is None:
        return ()
    out, todo = [], list(node.body)
    while todo:
        sub = todo.pop()
        if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            continue        # a nested def's maps run in its own frame
        if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Name) and sub.func.id == "map" \
                and len(sub.args) >= 2 and not sub.keywords:
            target, lambda_line = _mapped_name(sub.args[0])
            out.append(MapCall(sub.lineno, sub.end_lineno, target, lambda_line,
                               ", ".join(_segment(path, a) for a in sub.args[1:])))
        todo.extend(ast.iter_child_nodes(sub))
    return tuple(sorted(out, key=lambda m: m.line))


def map_calls(path, def_line: int) -> tuple:
    """The `map(f, ...)` calls (MapCall) in the function defined at `def_line`, not counting nested defs;
    () when there is no such function."""
    return _map_calls(str(path), def_line)


@lru_cache(maxsize=1024)
def _parameters(path: str, def_line: int) -> tuple:
    node = function_at(parse(path), def_line)
    if node is None:
        return ()
    a = node.args
    return tuple(p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs))


def parameters(path, def_line: int) -> tuple:
    """Names of the named parameters of the function defined at `def_line` (not *args / **kwargs)."""
    return _parameters(str(path), def_line)


@lru_cache(maxsize=1024)
def _call_passes(path: str, line: int, name: str, argument: str) -> bool:
    tree = parse(path)
    if tree is None:
        return False
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and node.lineno == line and _callable_name(node.func) == name:
            values = [*node.args, *(k.value for k in node.keywords)]
            if any(_callable_name(v) == argument for v in values):
                return True
    return False


def call_passes(path, line: int, name: str, argument: str) -> bool:
    """Whether a call of `name` starting at `line` passes something named `argument` (`f` or `obj.f`) as
    one of its arguments: `multi_apply(self._target_single, ...)` passes `_target_single`."""
    return _call_passes(str(path), line, name, argument)
