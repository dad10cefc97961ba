"""Progress display and quiet output: progress on a terminal only, `--quiet` for scripts and CI, and the
profiled script's own output passed through while the profiler's log lines are kept off the terminal.

Terminal runs give the real CLI a pseudo-terminal as stderr and read what it draws there."""
from __future__ import annotations

import fcntl
import os
import pty
import select
import signal
import struct
import subprocess
import sys
import termios

import pytest

from conftest import SCRIPTS, run_cli

from npu_advise.collect.output_relay import PROFILER_LOG_LINE, PROFILER_PRINT_LINE, LineFilter, OutputRelay

CHATTER = SCRIPTS / "stderr_chatter.py"
USDT = b"USDT:2026-12-02 00:00:06 4481:4481 SyncActivityProfilerHandler.cpp:52] profiler_start"


def run_on_terminal(*args, cwd=None, timeout=300):
    """(returncode, stdout text, bytes written to the terminal that is the CLI's stderr)."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))
    proc = subprocess.Popen([sys.executable, "-m", "npu_advise.cli", *map(str, args)], cwd=cwd,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=slave, start_new_session=True)
    os.close(slave)
    out = proc.stdout.fileno()
    streams = {master: bytearray(), out: bytearray()}
    open_fds = [master, out]
    while open_fds:
        ready = select.select(open_fds, [], [], timeout)[0]
        if not ready:
            proc.kill()
            raise AssertionError(f"npu-advise {' '.join(map(str, args))} timed out")
        for fd in ready:
            try:
                data = os.read(fd, 65536)
            except OSError:             # EIO: the last writer closed the terminal
                data = b""
            if data:
                streams[fd] += data
            else:
                open_fds.remove(fd)
    proc.wait(timeout)
    os.close(master)
    proc.stdout.close()
    return proc.returncode, streams[out].decode(), bytes(streams[master])


# -- the line filter -------------------------------------------------------------------------------------

def test_filter_drops_profiler_log_lines_only():
    f = LineFilter()
    out = f.feed(USDT + b"\nepoch 1\nINFO: my own line\nWARNING: lr high\n")
    out += f.feed(b"STAGE:2026-12-02 00:00:06 4481:4481 ActivityProfilerController.cpp:314] Completed Stage: Warm Up\n")
    out += f.feed(b"[W1202 00:00:06.123456789 4481 TensorImpl.h:1900] Warning: deprecated\n")
    out += f.feed(b"2026-12-02 00:00:06 [INFO] [4481] profiler.py: Start parsing profiling data\n")
    assert out == (b"epoch 1\nINFO: my own line\nWARNING: lr high\n"
                   b"[W1202 00:00:06.123456789 4481 TensorImpl.h:1900] Warning: deprecated\n")
    assert [d.split("]")[-1].strip() for d in f.dropped] == [
        "profiler_start", "Completed Stage: Warm Up", "profiler.py: Start parsing profiling data"]


def test_filter_passes_partial_lines_and_decides_log_lines_at_their_end():
    f = LineFilter()
    assert f.feed(b"\r 40%|####") == b"\r 40%|####"          # a progress bar of the script's: at once
    assert f.feed(b"\n") == b"\n"
    assert f.feed(USDT[:30]) == b""                         # may be a log line: held ...
    assert f.feed(USDT[30:]) == b""
    assert f.feed(b"\nnext") == b""                          # ... dropped at its end of line
    assert f.flush() == b"next"                              # what the relay writes after HOLD_S
    assert f.feed(b"loss=0.5 (\xe2\x9c\x93)\n") == b"loss=0.5 (\xe2\x9c\x93)\n"
    assert len(f.dropped) == 1
    assert PROFILER_LOG_LINE.match(USDT) and not PROFILER_LOG_LINE.match(b"USDT: not a log line")


def test_stdout_filter_drops_only_torch_npu_profiler_prints():
    f = LineFilter(PROFILER_PRINT_LINE)
    out = f.feed(b"2026-12-02 00:00:06 [INFO] [4481] profiler.py: Start parsing profiling data\n" + USDT + b"\n"
                 b"2026-12-02 00:00:06 [INFO] [4481] train.py: checkpoint saved\n")
    assert out == USDT + b"\n2026-12-02 00:00:06 [INFO] [4481] train.py: checkpoint saved\n"   # a C++ logger's
    assert f.dropped == ["2026-12-02 00:00:06 [INFO] [4481] profiler.py: Start parsing profiling data"]


def _window(fd) -> tuple:
    return struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))[:2]


def test_relay_gives_the_script_terminals_of_our_size_and_passes_resizes_on():
    master, terminal = pty.openpty()            # our terminal
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 100, 0, 0))
    before = signal.getsignal(signal.SIGWINCH)
    relay = OutputRelay(stdout_fd=terminal, stderr_fd=terminal)
    try:
        assert os.isatty(relay.stdout) and os.isatty(relay.stderr)
        assert _window(relay.stdout) == _window(relay.stderr) == (40, 100)
        fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 200, 0, 0))
        os.kill(os.getpid(), signal.SIGWINCH)    # what the terminal sends on a resize
        assert _window(relay.stdout) == _window(relay.stderr) == (50, 200)
    finally:
        relay.finish()
        os.close(terminal)
        os.close(master)
    assert signal.getsignal(signal.SIGWINCH) == before


# -- profile: the script's output, the profiler's log lines --------------------------------------------

@pytest.mark.parametrize("on_terminal", [False, True], ids=["pipe", "terminal"])
def test_profile_passes_script_output_through_without_profiler_lines(tmp_path, on_terminal):
    args = ["profile", "--out", tmp_path / "out", "--no-verify", "--no-stop", "--wait", "0", "--warmup", "0",
            "--active", "2", CHATTER]
    if on_terminal:
        code, stdout, terminal = run_on_terminal(*args, cwd=tmp_path)
        stderr = terminal.decode()
    else:
        proc = run_cli("--quiet", *args, cwd=tmp_path)
        code, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
    assert code == 2, stderr                   # the script's sys.exit(3): a failed script
    assert [line for line in stdout.splitlines() if line.startswith("step")] == [f"step {i}" for i in range(6)]
    own = [line for line in stderr.replace("\r\n", "\n").splitlines()
           if line.startswith(("stderr is", "user warning", "loading weights", "INFO:", "written"))]
    assert own == [f"stderr is a terminal: {on_terminal}", "user warning: learning rate is high",
                   "loading weights ... done", "INFO: my own log line", "written to fd 2"]
    assert "USDT:" not in stderr and "profiler_start" not in stderr and "profiler_start" not in stdout
    assert "profiler.py" not in stdout and "train.py: checkpoint saved" in stdout
    profiler_log = (tmp_path / "out" / "profiler.log").read_text()
    assert "profiler_start" in profiler_log and "profiler.py: Start parsing profiling data" in profiler_log
    assert "npu-advise: error:" in stderr and "exited with status 3" in stderr      # errors are never quiet
    if on_terminal:
        assert "\x1b[" in stderr and "loading rank0" in stderr         # the trace-loading progress bar
        assert "npu-advise: profiling" in stderr
    else:
        assert "npu-advise: profiling" not in stderr and "\x1b" not in stderr      # --quiet, a pipe
        assert [line for line in stdout.splitlines() if not line.startswith("step")] == [
            "2026-12-02 00:00:06 [INFO] [4481] train.py: checkpoint saved", f"report: {tmp_path / 'out' / 'report.html'}"]


# -- analyze / check: progress on a terminal, nothing in a pipe, --quiet --------------------------------

def test_cluster_progress_on_a_terminal_and_not_in_a_pipe(shared_data, tmp_path):
    cluster = shared_data / "npu" / "alexnet_2rank_text" / "level1"
    code, stdout, terminal = run_on_terminal("analyze", cluster, "--out", tmp_path / "a")
    assert code == 0, terminal
    text = terminal.decode()
    assert "\x1b[" in text
    for bar in ("loading 2 ranks", "loading trace_view.json", "comparing ranks", "2/2 ranks"):
        assert bar in text, text[-2000:]
    assert "scanning 0" not in text                          # no bar for nothing to do
    piped = run_cli("analyze", cluster, "--out", tmp_path / "b")
    assert piped.returncode == 0
    assert "\x1b" not in piped.stderr and "loading" not in piped.stderr
    # the same lines on stdout either way (timings aside)
    strip = lambda s: [line.split(" in ")[0].replace(str(tmp_path / "a"), "").replace(str(tmp_path / "b"), "")
                       for line in s.splitlines()]
    assert strip(stdout) == strip(piped.stdout)


def test_quiet_prints_only_results_and_errors(shared_data, tmp_path):
    trace = shared_data / "kineto" / "hta_ns_resolution_resnet_v100_rank0.pt.trace.json.gz"
    code, stdout, terminal = run_on_terminal("analyze", trace, "--out", tmp_path / "q", "--quiet")
    assert code == 0
    assert terminal == b""                                   # no progress, no info line
    assert stdout == f"report: {tmp_path / 'q' / 'report.html'}\n"
    bad = run_cli("-q", "analyze", tmp_path / "missing.json")
    assert bad.returncode == 2 and bad.stderr.startswith("npu-advise: error:")
    decoder = shared_data / "src" / "bevformer" / "projects" / "mmdet3d_plugin" / "bevformer" / "modules" / "decoder.py"
    loud = run_cli("check", decoder, "--fail-on", "none", "--no-cache")
    quiet = run_cli("-q", "check", decoder, "--fail-on", "none", "--no-cache")
    assert "NPA9" in loud.stdout and quiet.stdout == loud.stdout       # the findings are the result
    assert "npu-advise check:" in loud.stderr and quiet.stderr == ""
