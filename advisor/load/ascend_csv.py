"""Read the CSV/JSON summaries of a torch_npu text export into normalized DataFrames.

Normalization (variants seen in real files): cells may end in a tab, missing values are `N/A`, newer
versions add a leading `Device_id` column and rename `Block Dim`/`Mix Block Dim` to `Block Num`/
`Mix Block Num`. Columns keep their torch_npu names (so users recognize them) except these renames,
and numbers become floats; start times also get an exact int ns column (`start_ns`) for joins.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import TraceFormatError
from .jsonstream import too_deep

_RENAMES = {"Block Num": "Block Dim", "Mix Block Num": "Mix Block Dim"}
# Files and what the analysis uses them for (said in trace.limitations when one is missing).
CSV_FILES = {
    "step_trace_time": "step_trace_time.csv",
    "op_statistic": "op_statistic.csv",
    "kernel_details": "kernel_details.csv",
    "api_statistic": "api_statistic.csv",
    "operator_details": "operator_details.csv",
}
_TEXT_COLUMNS = {"Name", "Type", "OP State", "Accelerator Core", "Input Shapes", "Input Data Types",
                 "Input Formats", "Output Shapes", "Output Data Types", "Output Formats", "OP Type", "Core Type",
                 "Level", "API Name", "HF32 Eligible", "Call Stack", "Step", "Step Id", "Stage"}


_MAX_US = np.iinfo(np.int64).max // 1000 - 1     # the latest time whose ns fit in int64 (year 2262)


def _ns_from_text(values: pd.Series) -> np.ndarray:
    """Exact int ns from µs text like "1736408883704643.212" (no float rounding)."""
    if len(values) == 0:
        return np.zeros(0, dtype=np.int64)
    s = values.astype(str).str.strip()
    parts = s.str.partition(".")
    # Integers only, so every time stays exact; anything else (text, inf, beyond int64 ns) is unknown (-1),
    # like an empty cell, without turning the whole column into float.
    ok = (parts[0].str.fullmatch(r"-?\d{1,16}") & parts[2].str.fullmatch(r"\d*")).fillna(False).to_numpy(bool, copy=True)
    whole = pd.to_numeric(parts[0].where(ok, "0")).astype(np.int64).to_numpy(copy=True)
    ok &= np.abs(whole) < _MAX_US
    whole[~ok] = 0
    frac = pd.to_numeric((parts[2].where(ok, "0") + "0000").str[:4]).astype(np.int64).to_numpy()
    out = whole * 1000 + np.where(whole < 0, -1, 1) * ((frac + 5) // 10)
    return np.where(ok, out, -1)


def read_csv(path: Path) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=False)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise TraceFormatError(f"{path}: unreadable CSV ({str(exc).splitlines()[0]})") from None
    df.columns = [str(c).strip() for c in df.columns]
    df = df.loc[:, [c for c in df.columns if c and not c.startswith("Unnamed")]]
    df = df.rename(columns=_RENAMES)
    df = df.loc[:, ~df.columns.duplicated()]      # both spellings of a renamed column: the first one
    for c in df.columns:
        s = df[c].str.strip()
        s = s.where(~s.isin(["N/A", ""]), None)
        if c == "Start Time(us)":
            df["start_ns"] = _ns_from_text(s.fillna(""))
            df.loc[s.isna().to_numpy(), "start_ns"] = -1
        if c in _TEXT_COLUMNS:
            df[c] = s
        else:
            num = pd.to_numeric(s, errors="coerce")
            # keep text columns that are not numbers (e.g. an unknown new column)
            df[c] = num if num.notna().sum() >= s.notna().sum() else s
    return df


def read_json(path: Path):
    """A small JSON side file of the export (communication.json, profiler_info.json, ...)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:      # UnicodeDecodeError is a ValueError
        raise TraceFormatError(f"{path}: unreadable JSON ({exc})") from None
    except RecursionError:
        raise TraceFormatError(too_deep(path)) from None


def read_all(out_dir: Path) -> dict:
    """The CSV tables present in ASCEND_PROFILER_OUTPUT, by extras key."""
    tables = {}
    for key, fname in CSV_FILES.items():
        p = out_dir / fname
        if p.is_file():
            tables[key] = read_csv(p)
    comm = out_dir / "communication.json"
    if comm.is_file():
        tables["communication"], tables["communication_bandwidth"] = read_communication(comm)
    return tables


def read_communication(path: Path) -> tuple:
    """communication.json -> (one row per collective: [step, kind, op, group, start_us, elapse_ms,
    transit_ms, wait_ms, sync_ms, idle_ms]; one row per collective and link type with traffic:
    [step, kind, op, group, link, size_mb, time_ms, bandwidth_gbps])."""
    data = read_json(path)
    if not isinstance(data, dict):
        raise TraceFormatError(f"{path}: not a torch_npu communication.json (a JSON {type(data).__name__}, "
                               "not an object of steps)")
    rows, links = [], []
    for step, kinds in data.items():
        if not isinstance(kinds, dict):
            continue
        for kind, ops in kinds.items():
            if not isinstance(ops, dict):
                continue
            for key, info in ops.items():
                info = info if isinstance(info, dict) else {}
                t = info.get("Communication Time Info")
                t = t if isinstance(t, dict) else {}
                op, _, group = str(key).partition("@")
                base = {"step": str(step).removeprefix("step"), "kind": kind, "op": op, "group": group}
                rows.append({**base,
                             "start_us": t.get("Start Timestamp(us)"), "elapse_ms": t.get("Elapse Time(ms)"),
                             "transit_ms": t.get("Transit Time(ms)"), "wait_ms": t.get("Wait Time(ms)"),
                             "sync_ms": t.get("Synchronization Time(ms)"), "idle_ms": t.get("Idle Time(ms)")})
                bw = info.get("Communication Bandwidth Info")
                for link, b in (bw.items() if isinstance(bw, dict) else ()):
                    if isinstance(b, dict):
                        links.append({**base, "link": str(link), "size_mb": b.get("Transit Size(MB)"),
                                      "time_ms": b.get("Transit Time(ms)"), "bandwidth_gbps": b.get("Bandwidth(GB/s)")})
    return (_numeric(pd.DataFrame(rows, columns=COMMUNICATION_COLUMNS), COMMUNICATION_COLUMNS[4:]),
            _numeric(pd.DataFrame(links, columns=BANDWIDTH_COLUMNS), BANDWIDTH_COLUMNS[5:]))


COMMUNICATION_COLUMNS = ("step", "kind", "op", "group", "start_us", "elapse_ms", "transit_ms", "wait_ms",
                         "sync_ms", "idle_ms")
BANDWIDTH_COLUMNS = ("step", "kind", "op", "group", "link", "size_mb", "time_ms", "bandwidth_gbps")


def _numeric(df: pd.DataFrame, cols) -> pd.DataFrame:
    for c in cols:
        df[c] = pd.to_numeric(df[c], errors="coerce")
    return df


def step_breakdown(step_trace: pd.DataFrame) -> pd.DataFrame:
    """step_trace_time rows -> [step, computing_us, communication_us, free_us, step_us]; the step time
    is computing + communication not overlapped + free (msprof-analyze's definition)."""
    df = step_trace
    out = pd.DataFrame({
        "step": pd.to_numeric(df.get("Step"), errors="coerce"),
        "computing_us": df["Computing"].astype(float),
        "communication_us": df["Communication(Not Overlapped)"].astype(float),
        "free_us": df["Free"].astype(float),
    })
    out["step_us"] = out["computing_us"] + out["communication_us"] + out["free_us"]
    return out
