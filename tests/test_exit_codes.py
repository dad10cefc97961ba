"""The documented exit statuses (README "Exit status", `npu-advise --help`), through the real CLI."""
from __future__ import annotations

import subprocess
import sys

from conftest import SHARED_DATA, run_cli

from npu_advise.errors import EXIT_CODES_HELP, EXIT_INTERNAL, EXIT_OK, EXIT_USER_ERROR

SMALL_TRACE = SHARED_DATA / "kineto" / "hta_amd_mi250_minitoy_train.json.gz"


def _one_error_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    return lines[0]


def test_help_lists_the_exit_statuses():
    r = run_cli("--help")
    assert r.returncode == EXIT_OK
    flat = " ".join(r.stdout.split())
    assert "Exit status: 0 ok; 1 `check` found findings at or above --fail-on" in flat
    assert " ".join(EXIT_CODES_HELP.split()) in flat


def test_ok_is_0(tmp_path, shared_data):
    r = run_cli("analyze", SMALL_TRACE, "--out", tmp_path / "out", timeout=120)
    assert r.returncode == EXIT_OK, r.stderr
    assert (tmp_path / "out" / "findings.json").is_file()


def test_user_and_input_errors_are_2(tmp_path):
    missing = run_cli("analyze", tmp_path / "nope.json", "--out", tmp_path / "o1")
    assert missing.returncode == EXIT_USER_ERROR
    assert _one_error_line(missing).startswith("npu-advise: error:")
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_bytes(b'{"traceEvents": [{"name": "a", "ph": "X", "ts": 1')
    r = run_cli("analyze", corrupt, "--out", tmp_path / "o2")
    assert r.returncode == EXIT_USER_ERROR
    assert str(corrupt) in _one_error_line(r)
    bad_option = run_cli("analyze", corrupt, "--no-such-option")
    assert bad_option.returncode == EXIT_USER_ERROR
    no_report = run_cli("apply", tmp_path)
    assert no_report.returncode == EXIT_USER_ERROR
    assert _one_error_line(no_report).startswith("npu-advise: error:")


def test_a_bug_of_ours_is_3_in_one_line_and_debug_shows_the_traceback(tmp_path, shared_data):
    # A real bug is injected into the real entry point: the loader raises something no caller expects.
    code = ("import sys, npu_advise.load as p\n"
            "def boom(*a, **k): raise KeyError('injected')\n"
            "p.load_profile = boom\n"
            "from npu_advise.cli import main\n"
            "main(sys.argv[1:])\n")
    args = [sys.executable, "-c", code, "analyze", str(SMALL_TRACE), "--out", str(tmp_path / "out")]
    r = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert r.returncode == EXIT_INTERNAL
    line = _one_error_line(r)
    assert line.startswith("npu-advise: internal error: KeyError") and "--debug" in line
    d = subprocess.run(args[:3] + ["--debug"] + args[3:], capture_output=True, text=True, timeout=120)
    assert d.returncode != EXIT_OK and "Traceback" in d.stderr and "injected" in d.stderr
