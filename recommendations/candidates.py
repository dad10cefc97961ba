"""The one type every rewrite generator returns and the verification stage consumes.

A `Candidate` is a proposed rewrite of one file: the file's text before and after, what the generator
checked statically, which packages the new code needs, and -- found from the two texts -- which function
it replaces, so the verification stage can run the rewritten function beside the original on the user's
own run. Generators build one with `Candidate.from_rewrite(...)` from a codemod's `Rewrite`; the
recommender turns it into the finding's `Fix` (`to_fix`).
"""
from __future__ import annotations

import ast
import difflib
import functools
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .codemods.diffs import sha256_text, unified_diff

# The replaced "function" of a change outside every def (entry-point wrappers, module-level imports).
MODULE_LEVEL = "<module>"
# How a fix's constraints name what only the verification stage proves.
NEEDS_VERIFICATION = "proven only by verification on your run: "


@dataclass
class Candidate:
    """A proposed rewrite of one function of one file (or of module-level code)."""

    file: str                          # relative to the project root, posix separators
    path: Path                         # the file on disk
    old_source: str                    # the file's text the rewrite was made from
    new_source: str                    # the whole file after the rewrite
    description: str
    catalog_ref: str
    auto_applicable: bool              # its static preconditions hold (verification may still reject it)
    preconditions: list = field(default_factory=list)   # what the generator checked statically
    constraints: list = field(default_factory=list)     # what it could not check (the user must)
    requires: list = field(default_factory=list)        # packages the new code imports (torch_npu, mx_driving)
    line: Optional[int] = None                          # where a finding about it should point
    # Found from old_source / new_source by `locate`:
    function: Optional[str] = None     # qualified name ("LaneHead.densify", "f.<locals>.g"), or MODULE_LEVEL
    def_lines: Optional[tuple] = None  # (first, last) line of that def in old_source, decorators included
    function_source: Optional[str] = None   # the def as it reads in new_source (decorators included)
    added_imports: list = field(default_factory=list)   # module-level import lines the rewrite adds
    # NPU-only callables the new function calls (e.g. "mx_driving.npu_add_relu"): verification runs each
    # through the pure-PyTorch reference of its documented semantics, where one is defined.
    npu_calls: list = field(default_factory=list)
    # Preconditions no syntax check can prove (iterations independent, equal shapes across a list, broadcasting
    # as one element did): the verification stage's acceptance on the user's run is their proof. A candidate
    # with any is not auto-applicable (auto_applicable is False) until that stage verifies it.
    needs_verification: list = field(default_factory=list)
    # Whether the verification stage's acceptance makes it auto-applicable (see Rewrite.applicable_when_verified).
    applicable_when_verified: bool = False
    # Further candidates for the same finding, best first: the verification stage tries the next one when this
    # one is rejected (e.g. a broadcast rewrite, then torch.vmap of the body, then a stacked-list vmap).
    alternatives: list = field(default_factory=list)

    @classmethod
    def from_rewrite(cls, rel: str, path: Path, old_source: str, rewrite, catalog_ref: str) -> "Candidate":
        c = cls(file=rel.replace("\\", "/"), path=Path(path), old_source=old_source,
                new_source=rewrite.new_source, description=rewrite.description, catalog_ref=catalog_ref,
                auto_applicable=bool(rewrite.auto_applicable), preconditions=list(rewrite.verified),
                constraints=list(rewrite.constraints), requires=list(rewrite.requires), line=rewrite.line,
                needs_verification=list(rewrite.needs_verification),
                applicable_when_verified=bool(getattr(rewrite, "applicable_when_verified", rewrite.auto_applicable)))
        c.locate()
        return c

    @property
    def diff(self) -> str:
        return unified_diff(self.file, self.old_source, self.new_source)

    def to_fix(self, fix_id: str):
        """The finding's `Fix`: the diff, the content hashes `apply` checks, the replaced function."""
        from npu_advise.findings import Fix

        return Fix(description=self.description, auto_applicable=self.auto_applicable, diff=self.diff,
                   fix_id=fix_id,
                   constraints=list(self.constraints) + [f"verified: {v}" for v in self.preconditions]
                   + [f"{NEEDS_VERIFICATION}{v}" for v in self.needs_verification],
                   catalog_ref=self.catalog_ref, file=self.file, file_sha256=sha256_text(self.old_source),
                   patched_sha256=sha256_text(self.new_source), function=self.function,
                   function_lines=list(self.def_lines) if self.def_lines else None)

    def locate(self) -> None:
        """Fill `function`, `def_lines`, `function_source`, `added_imports` and `npu_calls` from the texts.

        The replaced function is the innermost def that holds every changed line in both texts, once
        module-level imports the rewrite adds are set aside. Anything else is MODULE_LEVEL."""
        try:
            old_defs, new_defs = _source_defs(self.old_source), _source_defs(self.new_source)
        except SyntaxError:
            return
        old_lines, new_lines = self.old_source.split("\n"), self.new_source.split("\n")
        changed_old, changed_new = [], []
        for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(None, old_lines, new_lines, autojunk=False).get_opcodes():
            if tag == "equal":
                continue
            inserted = new_lines[j1:j2]
            if i1 == i2 and _are_imports(inserted):
                self.added_imports += [l for l in inserted if l.strip()]
                continue
            # an insertion sits between old lines i1 and i1 + 1: both must be inside the def
            changed_old += list(range(i1 + 1, i2 + 1)) if i2 > i1 else [i1, i1 + 1]
            changed_new += list(range(j1 + 1, j2 + 1)) if j2 > j1 else [j1, j1 + 1]
        self.function = MODULE_LEVEL
        if not changed_old:
            return
        name = _innermost(old_defs, changed_old)
        if name is None or _innermost(new_defs, changed_new) != name:
            return
        first, last = old_defs[name]
        new_first, new_last = new_defs[name]
        self.function, self.def_lines = name, (first, last)
        self.function_source = "\n".join(new_lines[new_first - 1:new_last]) + "\n"
        self.npu_calls = _calls_into(self.function_source, self.requires)


def function_defs(tree: ast.Module) -> dict:
    """qualified name (as Python's __qualname__) -> (def node, the statement list holding it)."""
    out = {}

    def walk(body, prefix: str, in_function: bool):
        for node in body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = f"{prefix}{'<locals>.' if in_function else ''}{node.name}"
                is_def = not isinstance(node, ast.ClassDef)
                if is_def and name not in out:      # a redefinition keeps the first (a rare, unverifiable case)
                    out[name] = (node, body)
                walk(node.body, name + ".", is_def)
            else:
                for child_body in _bodies(node):
                    walk(child_body, prefix, in_function)

    walk(tree.body, "", False)
    return out


# Every candidate of a file is located against the same original text: parse it once.
@functools.lru_cache(maxsize=16)
def _source_defs(source: str) -> dict:
    """qualified name -> (first line incl. decorators, last line) of every def (read-only: shared). Raises
    SyntaxError."""
    return {name: (min([node.lineno] + [d.lineno for d in node.decorator_list]), node.end_lineno)
            for name, (node, _) in function_defs(ast.parse(source)).items()}


def _bodies(node) -> list:
    """Statement lists nested in a compound statement that is not a def or class (if/for/with/try)."""
    out = []
    for attr in ("body", "orelse", "finalbody"):
        value = getattr(node, attr, None)
        if isinstance(value, list) and value and isinstance(value[0], ast.stmt):
            out.append(value)
    for handler in getattr(node, "handlers", []) or []:
        out.append(handler.body)
    for case in getattr(node, "cases", []) or []:
        out.append(case.body)
    return out


def _innermost(defs: dict, lines: list) -> Optional[str]:
    """The def with the fewest lines that spans every line in `lines`."""
    lo, hi = min(lines), max(lines)
    spanning = [(last - first, name) for name, (first, last) in defs.items() if first <= lo and hi <= last]
    return min(spanning)[1] if spanning else None


def _are_imports(lines: list) -> bool:
    text = "\n".join(lines).strip()
    if not text or any(l[:1].isspace() for l in lines if l.strip()):
        return False
    try:
        body = ast.parse(text).body
    except SyntaxError:
        return False
    return all(isinstance(s, (ast.Import, ast.ImportFrom)) for s in body)


def _calls_into(source: str, packages: list) -> list:
    """Dotted names of the calls in `source` whose root is one of `packages` ("mx_driving.npu_add_relu")."""
    roots = {p.split(".")[0] for p in packages}
    if not roots:
        return []
    found = []
    # CRLF files: textwrap.dedent does not see a margin on lines ending in \r
    for node in ast.walk(ast.parse(textwrap.dedent(source.replace("\r\n", "\n")))):
        if isinstance(node, ast.Call):
            name = dotted_name(node.func)
            if name and name.split(".")[0] in roots and name not in found:
                found.append(name)
    return found


def dotted_name(node) -> Optional[str]:
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    return ".".join([node.id] + parts[::-1])
