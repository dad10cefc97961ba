"""Shared test helpers: repository paths, running the real CLI, finding marked example lines."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SCRIPTS = Path(__file__).resolve().parent / "scripts"
EXAMPLE = REPO / "examples" / "bev_train" / "train.py"


def run_cli(*args, cwd=None, timeout=300, env=None) -> subprocess.CompletedProcess:
    """`npu-advise ARGS...` through the real entry point, in a separate process."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    return subprocess.run([sys.executable, "-m", "npu_advise.cli", *map(str, args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def marker_line(path, tag: str) -> int:
    """Line number (1-based) of the line ending in `# npa-example: TAG` in `path`."""
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    hits = [i + 1 for i, line in enumerate(lines) if line.rstrip().endswith(f"# npa-example: {tag}")]
    assert len(hits) == 1, f"expected exactly one '{tag}' marker in {path}, found {hits}"
    return hits[0]


def read_json(path):
    return json.loads(Path(path).read_text(encoding="utf-8"))


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared profiler data not present at {SHARED_DATA}")
    return SHARED_DATA
