"""The collector's per-call records (`npa.src:` ranges) as the `calls` table, with placement flags.

A range name is `npa.src:FILE:LINE:FUNC`, followed since placement tracking by `|FLAGS`:
`p=d|h` (the call touched device tensors / host tensors only), `s=0|1|2;api=NAME` for sync-prone calls
(0: read a host tensor, 1: read a device tensor, 2: a write through a mask), `c=COMPONENT` (torch code
such as the optimizer made the call), `r=N` (index of the device root in the trace metadata's
`placement.roots`). See `npu_advise.collect.placement`. Names without flags (older traces) give
placement -1 (not recorded).
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd

from .. import model

MARKER_PREFIX = "npa.src:"
_FLAGS = re.compile(r"\|(p=[dh](?:;[a-z]+=[^;|]*)*)$")


def split_marker(name: str):
    """(file, line, function, flags dict) of one marker range name."""
    body = name[len(MARKER_PREFIX):]
    flags = {}
    m = _FLAGS.search(body)
    if m:
        body = body[:m.start()]
        flags = dict(part.split("=", 1) for part in m.group(1).split(";"))
    file, line, func = body.rsplit(":", 2)
    return file, int(line), func, flags


def calls_table(markers: pd.DataFrame, parsed: list, codes: np.ndarray, marker_loc: np.ndarray,
                steps: pd.DataFrame) -> pd.DataFrame:
    """One row per marker: its location and flags (`parsed` per distinct name, `codes` per row)."""
    def per_name(key, convert, missing):
        return np.asarray([convert(f[key]) if key in f else missing for f in parsed], dtype=object)[codes]

    on_device = np.asarray([(1 if f["p"] == "d" else 0) if "p" in f else -1 for f in parsed], dtype=np.int8)[codes]
    sync = np.asarray([int(f["s"]) if "s" in f else -1 for f in parsed], dtype=np.int8)[codes]
    root = np.asarray([int(f["r"]) if "r" in f else -1 for f in parsed], dtype=np.int64)[codes]
    ts = markers["ts"].to_numpy()
    df = pd.DataFrame({"ts": ts, "dur": markers["dur"].to_numpy(), "tid": markers["tid"].to_numpy(),
                       "step": model.assign_steps(ts, steps), "loc": marker_loc, "on_device": on_device,
                       "sync": sync, "api": per_name("api", str, None), "component": per_name("c", str, None),
                       "root": root})
    return model.conform(df, model.CALL_COLUMNS)


def placement_roots(trace: model.Trace, names: list) -> None:
    """Store the `npa.root:N:DESCRIPTION` range names as `trace.metadata["placement"]["roots"]`."""
    found = {}
    for n in names:
        i, _, description = n[len("npa.root:"):].partition(":")
        if i.isdigit():
            found[int(i)] = description
    info = trace.metadata.setdefault("placement", {})
    if not isinstance(info, dict):
        info = trace.metadata["placement"] = {}
    info["roots"] = [found.get(i, "") for i in range(max(found) + 1)] if found else []
