"""What npu-advise prints about its own work besides results and errors: progress bars and info lines.

Progress is drawn by rich on stderr, and only when stderr is a terminal: a pipe, a log file or CI output
never gets control sequences (rich is not even imported then). Bars are transient: when a stage ends its
bar is erased, so a terminal keeps the same lines a pipe gets. `--quiet` turns off progress and info
lines ("npu-advise: analyzing ..."); errors, warnings and a command's results are never suppressed.
"""
from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager
from typing import Iterable, Iterator, Optional

import click

_state = {"quiet": False}


def set_quiet(value: bool) -> None:
    _state["quiet"] = bool(value)


def is_quiet() -> bool:
    return _state["quiet"]


def quiet_option(f):
    """`--quiet/-q` on a subcommand (the same as `npu-advise --quiet CMD`)."""
    return click.option("--quiet", "-q", is_flag=True, expose_value=False, is_eager=True,
                        callback=lambda ctx, param, value: value and set_quiet(True),
                        help="Print only errors and results: no progress display, no info lines.")(f)


def info(message: str, err: bool = True) -> None:
    """One of npu-advise's own info lines (to stderr unless `err` is False); none under --quiet."""
    if _state["quiet"]:
        return
    live = _display.progress
    if err and live is not None:      # above the bars, which are redrawn below it
        live.console.print(message, markup=False, highlight=False, soft_wrap=True)
    else:
        click.echo(message, err=err)


def shows_progress() -> bool:
    if _state["quiet"] or os.environ.get("TERM") == "dumb":
        return False
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):      # replaced or closed stream
        return False


class _NoTask:
    """What a stage reports its progress to when nothing is shown: costs one call per update."""

    def advance(self, amount: float = 1) -> None:
        pass


_NO_TASK = _NoTask()


class _Task:
    def __init__(self, progress, task_id):
        self._progress, self._id = progress, task_id

    def advance(self, amount: float = 1) -> None:
        self._progress.advance(self._id, amount)     # rich locks: safe from the inflating thread too


class _Display:
    """One live rich display shared by nested stages (the ranks of a cluster, the bytes of each rank)."""

    def __init__(self):
        self.lock = threading.Lock()
        self.progress = None
        self.open = 0

    def add(self, description: str, total: Optional[float], unit: str) -> _Task:
        with self.lock:
            if self.progress is None:
                self.progress = _new_progress()
                self.progress.start()
            self.open += 1
            return _Task(self.progress, self.progress.add_task(description, total=total, unit=unit))

    def remove(self, task: _Task) -> None:
        with self.lock:
            self.open -= 1
            if self.open:
                task._progress.remove_task(task._id)
            else:           # the last one: drawn once more in its final state, then erased
                self.progress.stop()
                self.progress = None


_display = _Display()


def _new_progress():
    from rich.console import Console
    from rich.filesize import decimal
    from rich.progress import (BarColumn, Progress, ProgressColumn, SpinnerColumn, TextColumn,
                               TimeElapsedColumn)
    from rich.text import Text

    class Amount(ProgressColumn):
        def render(self, task):
            unit = task.fields.get("unit", "")
            if unit == "bytes":
                done = decimal(int(task.completed))
                return Text(f"{done}/{decimal(int(task.total))}" if task.total else done)
            done = f"{task.completed:.0f}"
            return Text(f"{done}/{task.total:.0f} {unit}" if task.total else f"{done} {unit}")

    return Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), Amount(), TimeElapsedColumn(),
                    console=Console(stderr=True), transient=True)


@contextmanager
def task(description: str, total: Optional[float] = None, unit: str = "") -> Iterator:
    """A progress bar for one stage; yields an object whose `advance(n)` reports work done. `unit`:
    "bytes" shows sizes, anything else is printed after the counts ("ranks", "files")."""
    if total == 0 or not shows_progress():
        yield _NO_TASK
        return
    t = _display.add(description, total, unit)
    try:
        yield t
    finally:
        _display.remove(t)


def track(items: Iterable, description: str, total: Optional[int] = None, unit: str = "") -> Iterator:
    """`items`, advancing a progress bar by one per item."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)
    with task(description, total, unit) as t:
        for item in items:
            yield item
            t.advance()
