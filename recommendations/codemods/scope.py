"""The cache scope of one recommend() call, kept apart from base.py so that entering it imports no libcst:
a trace without source locations is analyzed without ever loading the parser."""
from __future__ import annotations

from contextlib import contextmanager

_depth = [0]
_on_end: list = []       # callbacks run when the outermost scope ends (base.py registers its cache clearing)


@contextmanager
def analysis_scope():
    """Keep every analysis made inside the block, drop them all at its end."""
    _depth[0] += 1
    try:
        yield
    finally:
        _depth[0] -= 1
        if _depth[0] == 0:
            for fn in _on_end:
                fn()


def active() -> bool:
    return _depth[0] > 0


def on_scope_end(fn) -> None:
    if fn not in _on_end:
        _on_end.append(fn)
