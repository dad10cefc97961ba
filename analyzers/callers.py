"""Ops that a helper function issues for a loop of its caller.

`for t in range(T): d = dist(a[t], b)` runs `dist`'s ops once per iteration, but the collector records the
innermost user line of each torch call: a line of `dist`, outside any loop. Kineto's python_function frames
(recorded with the stack) give the call chain, each frame at its function's def line, a comprehension's
frame at the comprehension's line. From an op's frame we climb to the nearest user caller: a comprehension
frame is the loop; a function frame is searched for its call sites of the callee by name, and the chain
is followed only where the callee is called from exactly one line (else the trace cannot say which call
issued the ops). That line, when it is inside a loop of the caller, is the op's call site.

`map(f, *lists)` is a loop too (mmdet's `multi_apply(func, *args)` maps `lambda *a: func(*a, **kw)` or
`partial(func, **kw)` over per-image lists): where the callee is not called by name in its caller, the
caller's one `map` whose mapped function is the callee (by name, through a `partial`, or the lambda frame
that called it) is the site. When the map applies a parameter of a wrapper (`func`), the wrapper's one
call that passes the callee by name is where the user would batch the work: that call is the site, the
map line its evidence (a generic wrapper serves many callers; its map line alone would merge them).
A wrapper in library code (mmdet installed) has no user frame: the callee, called back by library frames,
passed by name to the caller's one call of that library function, is mapped by that call.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import numpy as np

from npu_advise import model

from . import source
from .common import resolve_source

COMPREHENSION_FRAMES = ("<listcomp>", "<setcomp>", "<dictcomp>", "<genexpr>")
MAX_DEPTH = 3       # helper -> helper -> helper: deeper chains are not followed
LAMBDA_FRAME = "<lambda>"


class MapSite(NamedTuple):
    """A `map(...)` that called the op's function once per element, with no loop statement around it:
    reported at (file, line) in `function` (the map, or the call of the wrapper holding it)."""
    file: str
    line: int
    function: str
    map_file: Optional[str]    # None when the map is a library's (an installed mmdet's multi_apply)
    map_line: Optional[int]
    iter_text: str
    library: Optional[str] = None   # "file:function" of the library function that mapped it


def loop_call_sites(trace, rows: np.ndarray, functions: np.ndarray, project_root, with_calls: bool = False):
    """As `_loop_call_sites`; with `with_calls`, also for each row the id of the mapped function's call
    (python_function event) that issued it, for MapSite rows (-1 elsewhere): one call per element."""
    sites, calls = _loop_call_sites(trace, rows, functions, project_root)
    return (sites, calls) if with_calls else sites


def _loop_call_sites(trace, rows: np.ndarray, functions: np.ndarray, project_root) -> tuple:
    """For each op row (with the function name of its recorded location): (file, line, caller function) of
    the call, inside a loop or comprehension of a user caller, that issued it, or a MapSite; None where
    there is none or the chain is ambiguous."""
    out = [None] * len(rows)
    calls = np.full(len(rows), -1, dtype=np.int64)
    py = trace.python
    if not len(rows) or not len(py):
        return out, calls
    user = np.flatnonzero(py["is_user"].to_numpy())
    if not len(user):
        return out, calls
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
        out[i], calls[i] = memo[key]
    return out, calls


class _Frames:
    def __init__(self, py, project_root, located_files: list):
        self.file = py["file"].to_numpy()
        self.line = py["line"].to_numpy()
        self.function = py["function"].to_numpy()
        self.is_user = py["is_user"].to_numpy()
        self.py_id = py["py_id"].to_numpy()
        self.row_of = dict(zip(self.py_id.tolist(), range(len(py))))
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

    def call_site(self, frame: int, function: str) -> tuple:
        """(site, id of the mapped call for a MapSite else -1) of the op whose innermost user frame is
        `frame`, recorded in `function`; (None, -1) where there is none."""
        site = self._call_site(frame, function)
        if isinstance(site, tuple) and len(site) == 2:     # from _map_site: (site, mapped call id)
            return site
        return site, -1

    def _call_site(self, frame: int, function: str):
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
            if LAMBDA_FRAME in (name, str(self.function[frame])):
                return self._map_site(frame)
            path = self._path(file)
            if path is None:
                return None
            sites = [l for l, in_comprehension in source.call_lines(path, line, str(self.function[frame]))
                     if not (in_comprehension and self.comprehension_frames)]
            if not sites:
                return self._map_site(frame)
            if len(sites) != 1:
                return None
            if source.enclosing_loops(path, sites[0]):
                return str(path), sites[0], name
            frame = caller      # called once, outside a loop: the caller may itself be called in one
        return None

    def _map_site(self, frame: int):
        """(site, mapped call id) where `frame`'s function was called by a `map` of its user caller (directly,
        or through the lambda frame that called it); None where no single map matches."""
        callee = str(self.function[frame])
        mapped, via = frame, None
        caller = self._user_caller(frame)
        if caller is not None and str(self.function[caller]) == LAMBDA_FRAME and callee != LAMBDA_FRAME:
            mapped, via, caller = caller, callee, self._user_caller(caller)   # `lambda *a: func(*a, **kw)`
        if caller is None:
            return None
        file, def_line, name = self._key(caller)
        path = self._path(file)
        if path is None or name in COMPREHENSION_FRAMES or name == LAMBDA_FRAME:
            return None
        params = source.parameters(path, def_line)
        is_lambda = str(self.function[mapped]) == LAMBDA_FRAME
        named = via if is_lambda else callee
        matches = [m for m in source.map_calls(path, def_line)
                   if (m.lambda_line == int(self.line[mapped]) if is_lambda else m.lambda_line is None)
                   and (m.target == named or m.target in params or (is_lambda and via is None))]
        if not matches and not is_lambda:
            return self._library_mapper_site(frame, caller, callee, path, name)
        if len(matches) != 1:
            return None
        m = matches[0]
        call = int(self.py_id[mapped])     # one event per call of the mapped function: one per element
        if named is not None and m.target in params and m.target != named:
            return self._wrapper_call_site(caller, named, m, str(path), call)
        if source.enclosing_loops(path, m.line):
            return (str(path), m.line, name), -1     # a loop around the map: the loop is the loop
        return MapSite(str(path), m.line, name, str(path), m.line, m.iter_text), call

    def _one_call_passing(self, path, def_line: int, function: str, callee: str) -> Optional[int]:
        """The line of the one call of `function` in the function defined at `def_line`, when it passes `callee`
        by name; None when there are more calls (the trace cannot say which one ran) or it does not pass it."""
        sites = [l for l, in_comprehension in source.call_lines(path, def_line, function)
                 if not (in_comprehension and self.comprehension_frames)]
        return sites[0] if len(sites) == 1 and source.call_passes(path, sites[0], function, callee) else None

    def _wrapper_call_site(self, wrapper: int, callee: str, m, map_file: str, call: int):
        """The one call, in the wrapper's user caller, of the wrapper that maps a parameter, passing `callee`."""
        # sites carry the file's resolved path: Kineto's frames may name it relative to a sys.path entry
        outer = self._user_caller(wrapper)
        if outer is None:
            return None
        file, def_line, name = self._key(outer)
        path = self._path(file)
        wrapper_name = str(self.function[wrapper])
        if path is None or name in COMPREHENSION_FRAMES:
            return None
        line = self._one_call_passing(path, def_line, wrapper_name, callee)
        if line is None:
            return None
        if source.enclosing_loops(path, line):
            return (str(path), line, name), -1
        return MapSite(str(path), line, name, map_file, m.line, m.iter_text), call

    def _library_mapper_site(self, frame: int, caller: int, callee: str, path, caller_name: str):
        """The callee called back by library frames (its direct parent is not user code) below `caller`,
        whose one call of the library function the chain entered passes the callee by name."""
        entry = self.row_of.get(int(self.parent[frame]))
        if entry is None or self.is_user[entry]:
            return None
        while True:     # the library function the user called: the outermost frame below the caller
            up = self.row_of.get(int(self.parent[entry]))
            if up is None:
                return None
            if up == caller:
                break
            entry = up
        library = str(self.function[entry])
        line = self._one_call_passing(path, int(self.line[caller]), library, callee)
        if line is None:
            return None
        if source.enclosing_loops(path, line):
            return (str(path), line, caller_name), -1
        where = f"{_package_path(str(self.file[entry]))}:{library}"
        return MapSite(str(path), line, caller_name, None, None, "", where), int(self.py_id[frame])


def _package_path(file: str) -> str:
    """A library file as its package spells it (`mmdet/core/utils/misc.py`), not the install's path."""
    file = file.replace("\\", "/")
    for folder in ("site-packages/", "dist-packages/"):
        if folder in file:
            return file.rsplit(folder, 1)[1]
    return file
