"""Relay the profiled script's stderr to ours, without the profiler's own log lines.

The profiler libraries log from C++ to fd 2 of the process they run in: kineto (torch's profiler) writes
`USDT:2026-12-02 00:00:06 4481:4481 SyncActivityProfilerHandler.cpp:52] profiler_start` (and `STAGE:`,
`INFO:` ... lines) at every start and stop of a recording. They are about npu-advise's use of the
profiler, not about the user's script, so they go to `<out>/profiler.log` instead of the terminal.
Everything else passes through unchanged, in order and unbuffered: bytes are written as they arrive,
and only the start of a line that may still turn out to be a log line is held back, until its end of
line or for at most HOLD_S. When our stderr is a terminal, the script's stderr is a pseudo-terminal,
so the script sees a terminal as it would without npu-advise (its colors and progress bars stay).
"""
from __future__ import annotations

import os
import re
import select
import threading

HOLD_S = 0.05              # longest a partial line that looks like a log line's start is held back
_HEAD_MAX = 160            # a log line's header ends within this many bytes
DRAIN_S = 5.0              # after the script ended: how long output of processes it left behind is awaited

# One pattern per source, anchored at the line start; a line is dropped only when one matches.
PROFILER_LOG_LINE = re.compile(rb"|".join([
    # libkineto's own logger: SEVERITY:date time pid:tid file:line]
    rb"(?:INFO|WARNING|ERROR|V|STAGE|USDT|\?\?\?):\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \d+:\d+ [\w.+-]+:\d+\] ",
    # glog / c10 format, only from torch's and kineto's profiler sources
    rb"\[?[IWEF]\d{4} \d\d:\d\d:\d\d(?:\.\d+)? +\d+(?::\d+)? (?:kineto_shim|profiler_kineto|profiler_legacy|"
    rb"\w*Profiler\w*|\w*Activity\w*)\.(?:cpp|cc|h):\d+\] ",
    # torch_npu's profiler (torch_npu/profiler/analysis/prof_common_func): date time [LEVEL] [pid] profiler.py:
    rb"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[(?:INFO|WARNING|ERROR)\] \[\d+\] profiler\.py: ",
]))
# Bytes a log line's header is made of; a partial line with any other byte is written at once.
_HEADER_BYTES = re.compile(rb"[\w\[\]?:.+\- ]*")


class LineFilter:
    """Split a byte stream into what passes and the profiler's log lines (`dropped`)."""

    def __init__(self):
        self.held = b""
        self.dropped: list = []

    def feed(self, data: bytes) -> bytes:
        """The bytes to write now."""
        lines = (self.held + data).split(b"\n")
        self.held = b""
        out = []
        for line in lines[:-1]:
            if PROFILER_LOG_LINE.match(line):
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


class StderrRelay:
    """`child_fd` is the script's stderr; a thread copies what it writes to our fd 2 through LineFilter.

        relay = StderrRelay(); subprocess.run(cmd, stderr=relay.child_fd); relay.finish()
    """

    def __init__(self, target_fd: int = 2):
        self.target = target_fd
        self.filter = LineFilter()
        self.read_fd, self.child_fd = _terminal_pair(target_fd) or os.pipe()
        self.thread = threading.Thread(target=self._run, name="npa-stderr-relay", daemon=True)
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
            except OSError:           # our stderr went away: keep draining the child
                return
            data = data[n:]

    def finish(self) -> list:
        """After the script ended: relay what is left, return the dropped log lines. Processes the script
        left running may still hold its stderr: they are waited for DRAIN_S at most, then relayed on."""
        os.close(self.child_fd)
        self.thread.join(DRAIN_S)
        if not self.thread.is_alive():
            os.close(self.read_fd)
        return list(self.filter.dropped)


def _terminal_pair(target_fd: int):
    """(master, slave) of a pseudo-terminal with our terminal's size, raw (no newline translation), when
    `target_fd` is a terminal; else None."""
    try:
        if not os.isatty(target_fd):
            return None
        import fcntl
        import termios
        import tty
        master, slave = os.openpty()
    except (ImportError, OSError):      # no pseudo-terminals here (Windows, exhausted): a pipe instead
        return None
    try:
        tty.setraw(slave)
        size = fcntl.ioctl(target_fd, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(slave, termios.TIOCSWINSZ, size)
    except OSError:
        pass
    return master, slave
