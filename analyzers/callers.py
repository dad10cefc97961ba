"""Ops that a helper function issues for a loop of its caller.

`for t in range(T): d = dist(a[t], b)` runs `dist`'s ops once per iteration, but the collector records the
innermost user line of each torch call: a line of `dist`, outside any loop. Kineto's python_function frames
(recorded with the stack) give the call chain, each frame at its function's def line, a comprehension's
frame at the comprehension's line. From an op's frame we climb to the nearest user caller: a comprehension
frame is the loop; a function frame is searched for its call sites of the callee by name, and the chain
is followed only where the callee is called from exactly one line (else the trace cannot say which call
issued the ops). That line, when it is inside a loop of the caller, is the op's call site.
"""
from __future__ import annotations

import numpy as np

from npu_advise import model

from . import source
from .common import resolve_source

COMPREHENSION_FRAMES = ("<listcomp>", "<setcomp>", "<dictcomp>", "<genexpr>")
MAX_DEPTH = 3       # helper -> helper -> helper: deeper chains are not followed


def loop_call_sites(trace, rows: np.ndarray, functions: np.ndarray, project_root) -> list:
    """For each op row (with the function name of its recorded location): (file, line, caller function) of
    the call, inside a loop or comprehension of a user caller, that issued it; None where there is none or
    the chain is ambiguous."""
    out = [None] * len(rows)
    py = trace.python
    if not len(rows) or not len(py):
        return out
    user = np.flatnonzero(py["is_user"].to_numpy())
    if not len(user):
        return out
    ts, dur, tid = py["ts"].to_numpy(), py["dur"].to_numpy(), py["tid"].to_numpy()
    ops = trace.ops
    hit = model.innermost_enclosing(ts[user], ts[user] + dur[user], tid[user],
                                    ops["ts"].to_numpy()[rows], ops["tid"].to_numpy()[rows])
    frames = _Frames(py, project_root, trace.locations["file"].unique().tolist())
    memo = {}
    for i, h in enumerate(hit):
        if h < 0:
            continue
        frame = int(user[h])
        key = (frame, str(functions[i]))
        if key not in memo:
            memo[key] = frames.call_site(frame, str(functions[i]))
        out[i] = memo[key]
    return out


class _Frames:
    def __init__(self, py, project_root, located_files: list):
        self.file = py["file"].to_numpy()
        self.line = py["line"].to_numpy()
        self.function = py["function"].to_numpy()
        self.is_user = py["is_user"].to_numpy()
        self.row_of = dict(zip(py["py_id"].to_numpy().tolist(), range(len(py))))
        self.parent = py["parent_id"].to_numpy()
        self.root = project_root
        # Python <= 3.11 runs a comprehension in a frame of its own: a call in it is not its function's call
        self.comprehension_frames = bool(np.isin(self.function, COMPREHENSION_FRAMES).any())
        # Kineto shortens a frame's path relative to a sys.path entry ("pkg/mod.py"); the collector's
        # locations carry the full path
        self.located = [str(f) for f in located_files]

    def _path(self, file: str):
        path = resolve_source(file, self.root)
        if path is None:
            tail = "/" + file.replace("\\", "/").lstrip("./")
            matches = [f for f in self.located if f.replace("\\", "/").endswith(tail)]
            path = resolve_source(matches[0], self.root) if len(matches) == 1 else None
        return path

    def _user_caller(self, row: int):
        row = self.row_of.get(int(self.parent[row]))
        while row is not None and not self.is_user[row]:
            row = self.row_of.get(int(self.parent[row]))
        return row

    def _key(self, row: int) -> tuple:
        return str(self.file[row]), int(self.line[row]), str(self.function[row])

    def call_site(self, frame: int, function: str):
        # the op's own function: its innermost user frame, or an ancestor when a profiling hook's frame
        # (a torch function mode in the user's tree) sits in between
        for _ in range(MAX_DEPTH):
            if frame is None or str(self.function[frame]) == function:
                break
            frame = self._user_caller(frame)
        if frame is None or str(self.function[frame]) != function:
            return None
        for _ in range(MAX_DEPTH):
            caller = self._user_caller(frame)
            if caller is None:
                return None
            file, line, name = self._key(caller)
            if name in COMPREHENSION_FRAMES:
                return file, line, name
            path = self._path(file)
            if path is None:
                return None
            sites = [l for l, in_comprehension in source.call_lines(path, line, str(self.function[frame]))
                     if not (in_comprehension and self.comprehension_frames)]
            if len(sites) != 1:
                return None
            if source.enclosing_loops(path, sites[0]):
                return file, sites[0], name
            frame = caller      # called once, outside a loop: the caller may itself be called in one
        return None
