"""Rule registry: every rule code is documented exactly once, next to the analyzer that detects it.

An analyzer module declares its rules with `Rule(...)` at import time; `npu-advise rules [CODE]`,
the HTML report and the SARIF output read them from here.
"""
from __future__ import annotations

from dataclasses import dataclass, field

_RULES: dict = {}
_REWRITES: dict = {}         # rule code -> [RewriteDoc] of the generators that fix its findings


@dataclass(frozen=True)
class Rule:
    code: str            # "NPA101"; never reused for another meaning
    name: str            # kebab-case short name, e.g. "host-op-hotspot"
    category: str
    detects: str         # What it does
    why: str             # Why it costs time on an NPU
    fix: str             # What to do
    thresholds: dict = field(default_factory=dict)  # named constants the detector uses, with values

    def __post_init__(self):
        existing = _RULES.get(self.code)
        if existing is not None and existing != self:
            raise ValueError(f"rule code {self.code} registered twice with different meanings")
        _RULES[self.code] = self

    def text(self) -> str:
        lines = [f"{self.code} {self.name} [{self.category}]", "", "What it detects:", f"  {self.detects}",
                 "", "Why it costs time on an NPU:", f"  {self.why}", "", "What to do:", f"  {self.fix}"]
        if self.thresholds:
            lines += ["", "Thresholds:"] + [f"  {k} = {v}" for k, v in self.thresholds.items()]
        for doc in _REWRITES.get(self.code, []):
            lines += ["", f"Automatic rewrite `{doc.name}`:", f"  rewrites: {doc.rewrites}", f"  refuses: {doc.refuses}",
                      f"  proven from the syntax: {doc.static}", f"  proven by verification on your run: {doc.verification}"]
        return "\n".join(lines)


@dataclass(frozen=True)
class RewriteDoc:
    """One candidate rewrite generator, documented with the rules whose findings it fixes."""

    name: str
    rules: tuple
    rewrites: str        # what it rewrites
    refuses: str         # when it makes no candidate
    static: str          # preconditions proven from the syntax
    verification: str    # preconditions only the verification stage proves


def document_rewrite(doc: RewriteDoc) -> None:
    for code in doc.rules:
        docs = _REWRITES.setdefault(code, [])
        if all(d.name != doc.name for d in docs):
            docs.append(doc)


def all_rules() -> dict:
    from .analyzers import load_all  # every analyzer module registers its rules on import

    load_all()
    from . import recommendations  # noqa: F401  (registers the NPA8xx/NPA9xx rules it detects)
    return dict(sorted(_RULES.items()))


def get(code: str) -> Rule | None:
    return all_rules().get(code.upper())
