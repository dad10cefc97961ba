"""Attach the innermost *user* source frame to every host op (`loc` column + `Trace.locations`).

Sources, best first:
1. npu-advise collector markers: `npa.src:FILE:LINE:FUNC` ranges around each torch call made from user
   code; exact executing lines.
2. torch_npu `Call stack` args (frames `path(line): func` joined by ";\r\n", innermost first); exact.
3. Kineto `python_function` frames: the innermost user frame enclosing the op; these carry the
   function's *def* line only, so such locations are marked `exact=False`.
Backward ops inherit the location of the forward op with the same autograd sequence number.
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from .. import model
from .placement import calls_table, split_marker

# Path fragments that mark library code. Kineto shortens paths relative to sys.path entries, so a
# library file can also look like "torch/nn/modules/module.py": its first component is then checked
# against LIBRARY_PACKAGES.
_LIBRARY_FRAGMENTS = ("site-packages", "dist-packages", "/lib/python", "<frozen", "<built-in", "<string>",
                      "npu_advise/", "/advisor/collect/")
LIBRARY_PACKAGES = {
    "torch", "torchvision", "torchaudio", "torch_npu", "mx_driving", "numpy", "scipy", "mmcv", "mmengine",
    "mmdet", "mmdet3d", "mmseg", "lightning", "pytorch_lightning", "apex", "transformers", "timm",
    "runpy.py", "threading.py", "contextlib.py", "functools.py", "typing.py", "npu_advise", "spconv",
    "torch_scatter", "accelerate", "deepspeed", "importlib", "multiprocessing", "concurrent", "asyncio",
}
_FRAME = re.compile(r"^\s*(?P<file>.*)\((?P<line>-?\d+)\):?\s*(?P<function>.*?)\s*$")


def is_user_file(path: str) -> bool:
    if not path:
        return False
    p = path.replace("\\", "/")
    if any(f in p for f in _LIBRARY_FRAGMENTS):
        return False
    first = p.lstrip("./").split("/", 1)[0]
    return first not in LIBRARY_PACKAGES


def first_user_frame(stack: str):
    """(file, line, function) of the innermost user frame of a torch_npu call stack, or None."""
    for frame in re.split(r";\s*", stack):
        m = _FRAME.match(frame)
        if m and is_user_file(m["file"]):
            return m["file"], int(m["line"]), m["function"]
    return None


class _LocationTable:
    def __init__(self):
        self.index: dict = {}
        self.rows: list = []

    def id(self, file: str, line: int, function: str, exact: bool) -> int:
        key = (file, line, function, exact)
        i = self.index.get(key)
        if i is None:
            i = self.index[key] = len(self.rows)
            self.rows.append(key)
        return i

    def frame(self) -> pd.DataFrame:
        df = pd.DataFrame(self.rows, columns=["file", "line", "function", "exact"])
        return model.conform(df, model.LOCATION_COLUMNS)


def attach_locations(trace: model.Trace, markers: pd.DataFrame = None, call_stacks=None):
    ops = trace.ops
    table = _LocationTable()
    loc = np.full(len(ops), -1, dtype=np.int64)
    call = np.full(len(ops), -1, dtype=np.int64)

    if markers is not None and len(markers):
        names = pd.Series(markers["name"].to_numpy(), dtype=object)
        uniq, codes = np.unique(names.to_numpy().astype(str), return_inverse=True)
        ids, parsed = [], []
        for u in uniq:
            file, line, func, flags = split_marker(u)
            ids.append(table.id(file, line, func, True))
            parsed.append(flags)
        marker_loc = np.asarray(ids, dtype=np.int64)[codes]
        m_ts = markers["ts"].to_numpy()
        hit = model.innermost_enclosing(m_ts, m_ts + markers["dur"].to_numpy(), markers["tid"].to_numpy(),
                                        ops["ts"].to_numpy(), ops["tid"].to_numpy())
        loc = np.where(hit >= 0, marker_loc[np.where(hit >= 0, hit, 0)], -1)
        call = hit
        trace.calls = calls_table(markers, parsed, codes, marker_loc, trace.steps)

    if call_stacks is not None and (loc < 0).any():
        stacks = np.asarray(call_stacks, dtype=object)
        present = (stacks != None) & (loc < 0)  # noqa: E711  (elementwise; a C loop, unlike Series.notna)
        if present.any():
            codes, uniques = pd.factorize(stacks[present])
            ids = []
            for s in uniques:
                f = first_user_frame(s)
                ids.append(table.id(f[0], f[1], f[2], True) if f else -1)
            loc[present] = np.asarray(ids, dtype=np.int64)[codes]

    # Backward ops run from the autograd engine, outside any user frame. The forward op with the same
    # sequence number carries the exact line; inherit it before the inexact python-frame fallback would
    # pin the backward op on whatever user frame happened to be open (e.g. the `loss.backward()` line).
    seq = ops["seq"].to_numpy()
    _, parent = model.op_tree(ops)
    _inherit_by_sequence(loc, seq)
    _inherit_from_parents(loc, parent)

    py = trace.python
    if len(py) and (loc < 0).any():
        user = py[py["is_user"]]
        if len(user):
            u_ts = user["ts"].to_numpy()
            hit = model.innermost_enclosing(u_ts, u_ts + user["dur"].to_numpy(), user["tid"].to_numpy(),
                                            ops["ts"].to_numpy(), ops["tid"].to_numpy())
            need = (loc < 0) & (hit >= 0)
            if need.any():
                keys = user[["file", "line", "function"]].to_numpy()
                rows = hit[need]
                uniq_rows, inv = np.unique(rows, return_inverse=True)
                ids = np.asarray([table.id(str(keys[r][0]), int(keys[r][1]), str(keys[r][2]), False)
                                  for r in uniq_rows], dtype=np.int64)
                loc[need] = ids[inv]

    # Inherit again: forward ops located only by python frames pass their location on too.
    _inherit_by_sequence(loc, seq)
    _inherit_from_parents(loc, parent)

    ops["loc"] = loc
    ops["call"] = call
    trace.locations = table.frame()
    op_loc = np.append(loc, -1)  # position -1 -> -1
    for df in (trace.runtime, trace.kernels):
        if len(df):
            df["loc"] = op_loc[df["op"].to_numpy()]
        else:
            df["loc"] = np.zeros(0, dtype=np.int64)


def _inherit_by_sequence(loc: np.ndarray, seq: np.ndarray) -> None:
    """Give ops without a location the location of the first located op with the same autograd
    sequence number (in place)."""
    fwd = (loc >= 0) & (seq >= 0)
    need = (loc < 0) & (seq >= 0)
    if not (fwd.any() and need.any()):
        return
    first = pd.Series(loc[fwd], index=seq[fwd])
    first = first[~first.index.duplicated(keep="first")]
    inherited = first.reindex(seq[need]).to_numpy()
    ok = ~np.isnan(inherited)
    loc[np.flatnonzero(need)[ok]] = inherited[ok].astype(np.int64)


def _inherit_from_parents(loc: np.ndarray, parent: np.ndarray) -> None:
    """Ops nested in a located op (e.g. `aten::convolution_backward` inside the
    `autograd::engine::evaluate_function` that carries the sequence number) take its location (in place).
    Parents precede children in depth order, so one pass per nesting level suffices."""
    need = np.flatnonzero((loc < 0) & (parent >= 0))
    while len(need):
        src = loc[parent[need]]
        ok = src >= 0
        if not ok.any():
            return
        loc[need[ok]] = src[ok]
        need = need[~ok]
