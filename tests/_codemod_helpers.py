"""Helpers for the codemod tests: git apply --check on a diff, executing a function from source."""
from __future__ import annotations

import subprocess
from pathlib import Path

import libcst as cst


def git_apply_check(tmp_path: Path, rel: str, old: str, diff: str) -> None:
    """Write `old` at tmp_path/rel in a fresh git repo and assert `git apply --check` accepts `diff`."""
    target = tmp_path / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(old.encode("utf-8"))
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    patch = tmp_path / "fix.patch"
    patch.write_bytes(diff.encode("utf-8"))
    r = subprocess.run(["git", "apply", "--check", str(patch)], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    r = subprocess.run(["git", "apply", str(patch)], cwd=tmp_path, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def load_function(source: str, name: str, extra_globals=None):
    """Execute `source` (a whole module) and return its function `name`."""
    namespace = dict(extra_globals or {})
    exec(compile(source, f"<{name}>", "exec"), namespace)
    return namespace[name]


def function_source(source: str, name: str) -> str:
    module = cst.parse_module(source)
    for stmt in module.body:
        if isinstance(stmt, cst.FunctionDef) and stmt.name.value == name:
            return module.code_for_node(stmt)
    raise AssertionError(f"no function {name}")


def line_of(source: str, needle: str) -> int:
    hits = [i for i, l in enumerate(source.split("\n"), 1) if needle in l]
    assert hits, needle
    return hits[0]
