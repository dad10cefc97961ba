"""Shared test helpers: repository paths, running the real CLI, finding marked example lines."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SCRIPTS = Path(__file__).resolve().parent / "scripts"
EXAMPLE = REPO / "examples" / "bev_train" / "train.py"


def run_cli(*args, cwd=None, timeout=300, env=None) -> subprocess.CompletedProcess:
    """`npu-advise ARGS...` through the real entry point, in a separate process (its own session, so a
    timeout also ends the scripts and torchrun workers it started)."""
    full_env = dict(os.environ)
    full_env.update(env or {})
    cmd = [sys.executable, "-m", "npu_advise.cli", *map(str, args)]
    proc = subprocess.Popen(cmd, cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        raise AssertionError(f"npu-advise {' '.join(map(str, args))} timed out after {timeout} s\n{stderr[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


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
