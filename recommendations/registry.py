"""The recommender's plug-in points: fix generators and source scanners, found by module discovery.

Adding a rewrite touches one module: put it in `recommendations/generators/` (any file name) and
register it there with one decorator. Every module of that package is imported once, on the first
`recommend()` call; generators run in (order, name) order.

A **fix generator** gives an analyzer's finding its fix::

    from npu_advise.recommendations.registry import fix_generator

    @fix_generator("loops.my_idiom", rules=("NPA501", "NPA302"), order=20)
    def my_idiom(finding, src):          # src: recommendations.sources.Sources
        path, text, loc = src.located(finding)
        if text is None:
            return None
        from ..codemods import my_codemod   # import libcst lazily: traces without source never parse
        rewrite = my_codemod.rewrite(text, loc.line)       # a codemods.base.Rewrite, or None
        return src.candidate(path, text, rewrite, "loops.my_idiom") if rewrite else None

  `rules` are rule-code prefixes (`"NPA5"` matches NPA501). A generator returns a `Candidate` (a code
  rewrite, see candidates.py), an advice-only `findings.Fix` (no code), or None. For each finding
  without a fix every matching generator runs until one returns a Candidate, which becomes the fix;
  when none does, the first advice Fix is kept. The verification stage then runs each Candidate beside
  the function it replaces on the user's own run.

Generators outside this package (a project's own, or a test's) load from the modules named in the
environment variable NPU_ADVISE_GENERATORS (comma-separated, importable from sys.path).

A **source scanner** finds new findings in the project's source (fused ops, migration steps)::

    @source_scanner("fused_ops", order=10)
    def scan(src, files):                # files: the .py files to look at (the trace's, else the project's)
        ...                              # build Finding objects; src.attach(finding, candidate) for rewrites
        return findings
"""
from __future__ import annotations

import importlib
import os
import pkgutil
from dataclasses import dataclass
from typing import Callable

GENERATOR_PACKAGE = __package__ + ".generators"
EXTRA_MODULES_ENV = "NPU_ADVISE_GENERATORS"


@dataclass(frozen=True)
class FixGenerator:
    name: str
    rules: tuple          # rule-code prefixes
    order: int
    make: Callable        # (finding, Sources) -> Candidate | Fix | None

    def handles(self, rule: str) -> bool:
        return any(rule.startswith(p) for p in self.rules)


@dataclass(frozen=True)
class SourceScanner:
    name: str
    order: int
    scan: Callable        # (Sources, files) -> list[Finding]


_generators: dict = {}
_scanners: dict = {}
_loaded = [False]


def fix_generator(name: str, rules: tuple, order: int = 100):
    def register(fn):
        _generators[name] = FixGenerator(name, tuple(rules), order, fn)
        return fn
    return register


def source_scanner(name: str, order: int = 100):
    def register(fn):
        _scanners[name] = SourceScanner(name, order, fn)
        return fn
    return register


def _load() -> None:
    if _loaded[0]:
        return
    package = importlib.import_module(GENERATOR_PACKAGE)
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        importlib.import_module(f"{GENERATOR_PACKAGE}.{info.name}")
    for name in filter(None, (m.strip() for m in os.environ.get(EXTRA_MODULES_ENV, "").split(","))):
        try:
            importlib.import_module(name)
        except Exception as exc:
            from npu_advise.errors import UserError
            raise UserError(f"{EXTRA_MODULES_ENV}: cannot import {name} ({type(exc).__name__}: {exc})") from None
    _loaded[0] = True


def generators(rule: str = None) -> list:
    """Registered fix generators (those handling `rule`, when given), in run order."""
    _load()
    found = [g for g in _generators.values() if rule is None or g.handles(rule)]
    return sorted(found, key=lambda g: (g.order, g.name))


def scanners() -> list:
    _load()
    return sorted(_scanners.values(), key=lambda s: (s.order, s.name))
