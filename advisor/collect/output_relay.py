"""Relay the profiled script's stdout and stderr to ours, without the profiler's own log lines.

The profiler libraries log about npu-advise's use of the profiler, not about the user's script: kineto
(torch's profiler) writes `USDT:2026-12-02 00:00:06 4481:4481 SyncActivityProfilerHandler.cpp:52]
profiler_start` (and `STAGE:`, `INFO:` ... lines) from C++ to fd 2 at every start and stop of a recording,
and torch_npu's profiler `print`s `2026-12-02 00:00:06 [INFO] [4481] profiler.py: ...` lines to stdout.
Those go to `<out>/profiler.log` instead of the terminal. Everything else passes through unchanged, in
order and unbuffered: bytes are written as they arrive, and only the start of a line that may still turn
out to be a log line is held back, until its end of line or for at most HOLD_S. When our stream is a
terminal, the script's is a pseudo-terminal of the same size (resizes are passed on), so the script sees a
terminal as it would without npu-advise (its colors, progress bars and line buffering stay).
"""
from __future__ import annotations

import os
import re
import select
import signal
import threading

HOLD_S = 0.05              # longest a partial line that looks like a log line's start is held back
_HEAD_MAX = 160            # a log line's header ends within this many bytes
DRAIN_S = 5.0              # after the script ended: how long output of processes it left behind is awaited

# torch_npu's profiler (torch_npu/profiler/analysis/prof_common_func print_*_msg, to stdout):
# date time [LEVEL] [pid] profiler.py: message
_TORCH_NPU = rb"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[(?:INFO|WARNING|ERROR)\] \[\d+\] profiler\.py: "
# One pattern per source, anchored at the line start; a line is dropped only when one matches.
PROFILER_LOG_LINE = re.compile(rb"|".join([
    # libkineto's own logger: SEVERITY:date time pid:tid file:line]
    rb"(?:INFO|WARNING|ERROR|V|STAGE|USDT|\?\?\?):\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \d+:\d+ [\w.+-]+:\d+\] ",
    # glog / c10 format, only from torch's and kineto's profiler sources
    rb"\[?[IWEF]\d{4} \d\d:\d\d:\d\d(?:\.\d+)? +\d+(?::\d+)? (?:kineto_shim|profiler_kineto|profiler_legacy|"
    rb"\w*Profiler\w*|\w*Activity\w*)\.(?:cpp|cc|h):\d+\] ",
    _TORCH_NPU,
]))
# On stdout only torch_npu's prints: the C++ loggers never write there.
PROFILER_PRINT_LINE = re.compile(_TORCH_NPU)
# Bytes a log line's header is made of; a partial line with any other byte is written at once.
_HEADER_BYTES = re.compile(rb"[\w\[\]?:.+\- ]*")


class LineFilter:
    """Split a byte stream into what passes and the profiler's log lines (`dropped`)."""

    def __init__(self, log_line: re.Pattern = PROFILER_LOG_LINE):
        self.log_line = log_line
        self.held = b""
        self.dropped: list = []

    def feed(self, data: bytes) -> bytes:
        """The bytes to write now."""
        lines = (self.held + data).split(b"\n")
        self.held = b""
        out = []
        for line in lines[:-1]:
            if self.log_line.match(line):
                self.dropped.append(line.decode("utf-8", "replace"))
            else:
                out.append(line + b"\n")
        tail = lines[-1]
        if tail and len(tail) < _HEAD_MAX and _HEADER_BYTES.fullmatch(tail):
            self.held = tail          # maybe the start of a log line: decided by its end of line
        else:
            out.append(tail)
        return b"".join(out)

    def flush(self) -> bytes:
        held, self.held = self.held, b""
        return held


class StreamRelay:
    """`child_fd` is one of the script's output streams; a thread copies what it writes to our
    `target_fd` through a LineFilter."""

    def __init__(self, target_fd: int, log_line: re.Pattern):
        self.target = target_fd
        self.filter = LineFilter(log_line)
        pair = _terminal_pair(target_fd)
        self.is_terminal = pair is not None
        self.read_fd, self.child_fd = pair or os.pipe()
        self.thread = threading.Thread(target=self._run, name=f"npa-relay-{target_fd}", daemon=True)
        self.thread.start()

    def _run(self):
        f = self.filter
        while True:
            if f.held and not select.select([self.read_fd], [], [], HOLD_S)[0]:
                self._write(f.flush())
                continue
            try:
                data = os.read(self.read_fd, 65536)
            except OSError:           # EIO: every writer of the pseudo-terminal closed it
                data = b""
            if not data:
                break
            self._write(f.feed(data))
        self._write(f.flush())

    def _write(self, data: bytes):
        while data:
            try:
                n = os.write(self.target, data)
            except InterruptedError:
                continue
            except OSError:           # our stream went away: keep draining the child
                return
            data = data[n:]

    def resize(self):
        if self.is_terminal:
            _copy_size(self.target, self.child_fd)

    def finish(self, wait_s: float) -> list:
        os.close(self.child_fd)
        self.thread.join(wait_s)
        if not self.thread.is_alive():
            os.close(self.read_fd)
        return list(self.filter.dropped)


class OutputRelay:
    """The script's stdout and stderr, relayed to ours without the profiler's log lines:

        relay = OutputRelay(); subprocess.run(cmd, stdout=relay.stdout, stderr=relay.stderr); relay.finish()

    Used from the main thread, it passes terminal resizes (SIGWINCH) on to the script's terminals."""

    def __init__(self, stdout_fd: int = 1, stderr_fd: int = 2):
        self.relays = (StreamRelay(stdout_fd, PROFILER_PRINT_LINE), StreamRelay(stderr_fd, PROFILER_LOG_LINE))
        self.stdout, self.stderr = (r.child_fd for r in self.relays)
        self._old_winch = None
        if any(r.is_terminal for r in self.relays) and threading.current_thread() is threading.main_thread():
            try:
                self._old_winch = signal.signal(signal.SIGWINCH, self._on_resize)
            except (AttributeError, ValueError, OSError):     # no SIGWINCH here (Windows)
                self._old_winch = None

    def _on_resize(self, signum, frame):
        for r in self.relays:
            r.resize()

    def finish(self) -> list:
        """After the script ended: relay what is left, return the dropped log lines (stdout's, then
        stderr's). Processes the script left running may still hold its streams: they are waited for
        DRAIN_S at most, then relayed on."""
        if self._old_winch is not None:
            signal.signal(signal.SIGWINCH, self._old_winch)
            self._old_winch = None
        return [line for r in self.relays for line in r.finish(DRAIN_S)]


def _terminal_pair(target_fd: int):
    """(master, slave) of a pseudo-terminal with our terminal's size, raw (no newline translation), when
    `target_fd` is a terminal; else None."""
    try:
        if not os.isatty(target_fd):
            return None
        import tty
        master, slave = os.openpty()
    except (ImportError, OSError):      # no pseudo-terminals here (Windows, exhausted): a pipe instead
        return None
    try:
        tty.setraw(slave)
    except OSError:
        pass
    _copy_size(target_fd, slave)
    return master, slave


def _copy_size(terminal_fd: int, pty_fd: int):
    """Give the pseudo-terminal `pty_fd` the window size of `terminal_fd`."""
    try:
        import fcntl
        import termios
        size = fcntl.ioctl(terminal_fd, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(pty_fd, termios.TIOCSWINSZ, size)
    except (ImportError, OSError):
        pass
