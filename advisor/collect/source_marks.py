"""Exact source lines for every torch call the user's code makes while the profiler records.

Kineto's `with_stack` only gives Python *function* frames (their def lines), not the executing line.
`SourceMarkMode` is a TorchFunctionMode that, while recording, wraps each torch API call made from user
code in a profiler range named `npa.src:FILE:LINE:FUNC`, FILE:LINE being the innermost frame outside
torch, site-packages, the standard library and npu-advise. The loader (`npu_advise.load.locations`)
turns those ranges into exact op locations. Inside `__torch_function__` the mode is disabled, so only
the outermost torch call of a user line is wrapped (e.g. `F.grid_sample`, not its internal ops).

With a placement tracker (`placement.Placement`) each name also carries where the call's tensors would
live on the target machine: `npa.src:FILE:LINE:FUNC|p=d;s=1;api=item;r=0` (see `placement.flags_text`).

Outside recording the mode just forwards the call. Runs inside the profiled process.
"""
from __future__ import annotations

import os
import site
import sys
import sysconfig
import threading

import torch
from torch.overrides import TorchFunctionMode

from .placement import component_of

MARKER_PREFIX = "npa.src:"


def library_prefixes() -> tuple:
    """Directory prefixes (real paths, with trailing separator) whose files are not user code."""
    paths = set()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        p = sysconfig.get_paths().get(key)
        if p:
            paths.add(p)
    try:
        paths.update(site.getsitepackages())
    except AttributeError:  # virtualenv's old site.py
        pass
    user_site = getattr(site, "getusersitepackages", lambda: None)()
    if user_site:
        paths.add(user_site)
    paths.add(os.path.dirname(torch.__file__))
    # npu-advise itself (editable installs live outside site-packages)
    paths.add(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    return tuple(sorted({os.path.join(os.path.realpath(p), "") for p in paths}))


class UserFrames:
    """Decides, once per code object, whether a frame is user code; finds the innermost user frame."""

    def __init__(self, prefixes=None):
        self.prefixes = library_prefixes() if prefixes is None else prefixes
        self._is_user: dict = {}      # code object -> bool
        self._files: dict = {}        # code object -> absolute file path
        self._names: dict = {}        # (code, line) -> marker name
        self._sites: dict = {}        # (code, line, component) -> (marker name, site for the tracker)
        self._components: dict = {}   # library code object -> torch component or None

    def _classify(self, code) -> bool:
        filename = code.co_filename
        if not filename or filename.startswith("<"):
            user = False
        else:
            real = os.path.realpath(filename)
            user = not real.startswith(self.prefixes)
            self._files[code] = os.path.abspath(filename)
        self._is_user[code] = user
        return user

    def marker_name(self, frame):
        """`npa.src:FILE:LINE:FUNC` of the innermost user frame at or above `frame`, or None."""
        is_user = self._is_user
        while frame is not None:
            code = frame.f_code
            user = is_user.get(code)
            if user is None:
                user = self._classify(code)
            if user:
                key = (code, frame.f_lineno)
                name = self._names.get(key)
                if name is None:
                    name = self._names[key] = f"{MARKER_PREFIX}{self._files[code]}:{frame.f_lineno}:{code.co_name}"
                return name
            frame = frame.f_back
        return None

    def site(self, frame):
        """(marker name, (file, line, file name, component, direct)) of the innermost user frame at or
        above `frame`, or None; component: the torch component (optimizer, grad scaler, ...) whose library
        code stands between that frame and the call, if any; direct: no library frame in between."""
        is_user = self._is_user
        component = None
        direct = True
        while frame is not None:
            code = frame.f_code
            user = is_user.get(code)
            if user is None:
                user = self._classify(code)
            if user:
                key = (code, frame.f_lineno, component, direct)
                hit = self._sites.get(key)
                if hit is None:
                    name = self.marker_name(frame)
                    file = self._files[code]
                    hit = self._sites[key] = (name, (file, frame.f_lineno, os.path.basename(file), component,
                                                     direct))
                return hit
            direct = False
            if component is None:
                c = self._components.get(code, False)
                if c is False:
                    c = self._components[code] = component_of(code.co_filename or "")
                component = c
            frame = frame.f_back
        return None


class MarkState:
    """Flags the collector flips; read by the mode on every torch call (plain attributes: cheap)."""

    def __init__(self):
        self.recording = False
        self.tracking = False            # placement tracked (warmup and recording), see Collector
        self.main_thread = threading.get_ident()
        self.deadline_passed = False     # set by the --window-seconds timer thread
        self.on_deadline = None          # called on the main thread once the deadline has passed


class SourceMarkMode(TorchFunctionMode):
    def __init__(self, state: MarkState, frames: UserFrames = None, placement=None):
        super().__init__()
        self.state = state
        self.frames = frames or UserFrames()
        self.placement = placement        # a placement.Placement, or None: locations only
        self._flagged: dict = {}          # (marker name, flags) -> full range name
        self._record = torch._C._profiler._RecordFunctionFast
        # Backward ops get their location from the forward op with the same autograd sequence number
        # (see the loader); a marker around `loss.backward()` would claim all of them for that line.
        self._unmarked = {torch.Tensor.backward, torch.autograd.backward}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if kwargs is None:
            kwargs = {}
        state = self.state
        if state.deadline_passed and state.on_deadline is not None \
                and threading.get_ident() == state.main_thread:
            callback, state.on_deadline = state.on_deadline, None
            callback()   # stops the profiler, writes the trace; may raise SystemExit to end the script
        tracker = self.placement
        if not state.recording or func in self._unmarked:
            if tracker is None:
                return func(*args, **kwargs)
            if state.tracking or tracker.places(func, kwargs):
                return self._tracked(tracker, func, args, kwargs, sys._getframe(1), marked=False)
            return func(*args, **kwargs)
        if tracker is None:
            name = self.frames.marker_name(sys._getframe(1))
            if name is None:
                return func(*args, **kwargs)
            with self._record(name):
                return func(*args, **kwargs)
        return self._tracked(tracker, func, args, kwargs, sys._getframe(1), marked=True)

    def _tracked(self, tracker, func, args, kwargs, caller, marked: bool):
        """Run one torch call under placement tracking; `marked`: inside its flagged source-line range.
        Unmarked: the profiler's warmup step (not recorded), where placement is tracked so the tensors
        the first recorded step reads (last step's loss) are known; before it, only explicit placements
        (anchors made with `.to(device)` at start-up) are."""
        site = self.frames.site(caller)
        if site is None:
            return func(*args, **kwargs)
        try:
            flags, rule = tracker.before(func, args, kwargs, site[1], caller)
        except Exception as exc:   # never break the user's script over placement: stop tracking
            self._stop_tracking(tracker, exc)
            if not marked:
                return func(*args, **kwargs)
            with self._record(site[0]):
                return func(*args, **kwargs)
        if marked:
            key = (site[0], flags)
            name = self._flagged.get(key)
            if name is None:
                name = self._flagged[key] = f"{site[0]}|{flags}"
            with self._record(name):
                result = func(*args, **kwargs)
        else:
            result = func(*args, **kwargs)
        try:
            return tracker.after(result, rule)
        except Exception as exc:
            self._stop_tracking(tracker, exc)
            return result

    def _stop_tracking(self, tracker, exc) -> None:
        tracker.failed(exc)
        self.placement = None


def install(mode: SourceMarkMode):
    mode.__enter__()


def uninstall(mode: SourceMarkMode) -> bool:
    """Take the mode off torch's function-mode stack if it is on top (it is, unless the script pushed
    a mode of its own and left it there); afterwards torch calls pay nothing for it."""
    n = torch._C._len_torch_function_stack()
    if n and torch._C._get_function_stack_at(n - 1) is mode:
        mode.__exit__(None, None, None)
        return True
    return False
