"""`analyze`, `rules` and `compare` must work where torch is not installed (only `profile` needs it)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

# Makes `import torch` (and torch_npu) fail as it would without the package, then runs the CLI.
NO_TORCH = ("import sys; sys.modules['torch'] = None; sys.modules['torch_npu'] = None; "
            "from npu_advise.cli import main; main(sys.argv[1:])")


def run_without_torch(*args, cwd):
    return subprocess.run([sys.executable, "-c", NO_TORCH, *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("profile", [
    DATA / "kineto" / "hta_amd_mi250_minitoy_train.json.gz",
    DATA / "npu" / "alexnet_2rank_text" / "level1",
])
def test_analyze_without_torch(profile, tmp_path):
    r = run_without_torch("analyze", profile, "--out", tmp_path / "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    doc = json.loads((tmp_path / "out" / "findings.json").read_text())
    assert doc["trace"]["host_ops"] > 0
    assert (tmp_path / "out" / "report.html").stat().st_size > 100_000


def test_rules_without_torch(tmp_path):
    r = run_without_torch("rules", "NPA301", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("NPA301") and "Why it costs time on an NPU" in r.stdout


def test_profile_with_an_interpreter_without_torch_is_one_clear_line(tmp_path):
    """`--python` names the training environment; when it cannot import torch, say so in one line."""
    import venv
    env_dir = tmp_path / "bare"
    venv.EnvBuilder(with_pip=False).create(env_dir)
    bare_python = env_dir / "bin" / "python"
    script = tmp_path / "train.py"
    script.write_text("print('hi')\n")
    r = subprocess.run([sys.executable, "-m", "npu_advise.cli", "profile", "--python", str(bare_python),
                        "--out", str(tmp_path / "out"), str(script)],
                       cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr
    errors = [l for l in r.stderr.splitlines() if l.startswith("npu-advise: error:")]
    assert len(errors) == 1 and "torch" in errors[0], r.stderr
