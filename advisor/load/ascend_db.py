"""Read a torch_npu DB export (`ascend_pytorch_profiler[_N].db` + `analysis.db`) into a RawProfile.

Standard-library sqlite3 only, and SQL that SQLite 3.40 runs (no `GROUP_CONCAT ... ORDER BY`: call
chains are assembled in Python). Names are ids into STRING_IDS; thread ids are `globalTid` whose low 32
bits are the OS thread id (the same number the text export prints). CANN API names lack the text
export's layer prefix (`aclrtSynchronizeDevice` vs `AscendCL@aclrtSynchronizeDevice`); it is restored
from the API type so both exports name runtime calls alike.
"""
from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import TraceFormatError
from . import ascend_raw as R

# ENUM_API_TYPE ids -> the prefix the text export uses for that layer.
_API_PREFIX = {20000: "AscendCL@", 10000: "Node@", 5000: "Runtime@", 5500: "Hccl@", 15000: "Model@"}
_PYTORCH_OP, _PYTORCH_QUEUE, _PYTORCH_TRACE = 50001, 50002, 50003
_OVERLAP_KINDS = {0: "Computing", 1: "Communication", 2: "Communication(Not Overlapped)", 3: "Free"}
# analysis.db StepTraceTime columns -> step_trace_time.csv names
_STEP_TRACE_COLUMNS = {
    "step": "Step", "computing": "Computing", "communication_not_overlapped": "Communication(Not Overlapped)",
    "overlapped": "Overlapped", "communication": "Communication", "free": "Free", "stage": "Stage",
    "bubble": "Bubble", "communication_not_overlapped_and_exclude_receive":
        "Communication(Not Overlapped and Exclude Receive)", "preparing": "Preparing",
}
_TID_MASK = 0xFFFFFFFF


def _connect(path: Path) -> sqlite3.Connection:
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        con.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return con
    except sqlite3.DatabaseError as exc:
        raise TraceFormatError(f"{path}: not a readable SQLite database ({exc})") from None


def _tables(con) -> set:
    return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def _frame(con, sql: str) -> pd.DataFrame:
    try:
        return pd.read_sql_query(sql, con)
    except pd.errors.DatabaseError as exc:    # pandas' wrapper of the sqlite3 error (a missing column, ...)
        cause = exc.__cause__ or exc
        table = sql.rsplit(" FROM ", 1)[-1].split()[0]
        raise sqlite3.DatabaseError(f"table {table}: {cause}") from None


def read_db(db_path: Path, analysis_path: Path | None) -> tuple:
    """(RawProfile, extras dict, metadata dict) from the profiler DB (and analysis.db if present)."""
    con = _connect(db_path)
    try:
        return _read(con, db_path, analysis_path)
    except sqlite3.DatabaseError as exc:
        raise TraceFormatError(f"{db_path}: unexpected torch_npu DB content ({exc})") from None
    except (KeyError, ValueError, TypeError, OverflowError) as exc:
        # A time, id or type column holding text, blobs or NULLs where torch_npu writes integers.
        raise TraceFormatError(f"{db_path}: unexpected values in the torch_npu DB "
                               f"({type(exc).__name__}: {exc})") from None
    finally:
        con.close()


def _read(con, db_path: Path, analysis_path) -> tuple:
    tables = _tables(con)
    needed = {"STRING_IDS", "PYTORCH_API"}
    if not needed <= tables:
        raise TraceFormatError(f"{db_path}: not a torch_npu profiler DB (missing {', '.join(sorted(needed - tables))})")
    strings = dict(con.execute("SELECT id, value FROM STRING_IDS").fetchall())

    def text(ids: pd.Series) -> np.ndarray:
        return np.asarray([strings.get(int(i)) if pd.notna(i) else None for i in ids], dtype=object)

    raw = R.RawProfile()
    # Links: PYTORCH_API.connectionId -> CONNECTION_IDS.id -> connection ids shared with tasks/CANN calls.
    links = _frame(con, "SELECT id, connectionId FROM CONNECTION_IDS") if "CONNECTION_IDS" in tables \
        else pd.DataFrame({"id": [], "connectionId": []})

    api = _frame(con, "SELECT startNs, endNs, globalTid, connectionId, name, sequenceNumber, inputShapes, "
                      "callchainId, type FROM PYTORCH_API")
    start = pd.to_numeric(api["startNs"]).astype(np.int64).to_numpy()
    end = pd.to_numeric(api["endNs"]).astype(np.int64).to_numpy()
    tid = (api["globalTid"].astype(np.int64).to_numpy() & _TID_MASK)
    kind = api["type"].to_numpy()
    names = text(api["name"])

    op = np.flatnonzero(kind == _PYTORCH_OP)
    stacks = _call_stacks(con, strings) if "PYTORCH_CALLCHAINS" in tables else {}
    chain = api["callchainId"].to_numpy()
    raw.host = pd.DataFrame({
        "ts": start[op], "dur": end[op] - start[op], "name": names[op], "tid": tid[op],
        "seq": api["sequenceNumber"].iloc[op].fillna(-1).astype(np.int64).to_numpy(),
        "input_dims": text(api["inputShapes"].iloc[op]),
        "call_stack": np.asarray([stacks.get(int(c)) if pd.notna(c) else None for c in chain[op]], dtype=object),
    })
    py = np.flatnonzero(kind == _PYTORCH_TRACE)
    raw.python = pd.DataFrame({"ts": start[py], "dur": end[py] - start[py], "tid": tid[py], "name": names[py]})

    first_link = links.groupby("id")["connectionId"].min()
    q = np.flatnonzero(kind == _PYTORCH_QUEUE)
    qcorr = first_link.reindex(api["connectionId"].iloc[q].to_numpy()).fillna(-1).astype(np.int64).to_numpy()
    raw.queue = pd.DataFrame({"ts": start[q], "dur": end[q] - start[q], "tid": tid[q],
                              "kind": np.asarray(["enqueue" if str(n).startswith("Enqueue") else "dequeue"
                                                  for n in names[q]], dtype=object), "corr": qcorr})

    if "CANN_API" in tables:
        cann = _frame(con, "SELECT startNs, endNs, type, globalTid, connectionId, name FROM CANN_API")
        cnames = np.asarray([_API_PREFIX.get(int(t), "") + (strings.get(int(n)) or "")
                             for t, n in zip(cann["type"], cann["name"])], dtype=object)
        raw.runtime = pd.DataFrame({"ts": cann["startNs"].astype(np.int64), "dur": (cann["endNs"] - cann["startNs"]).astype(np.int64),
                                    "name": cnames, "tid": cann["globalTid"].astype(np.int64) & _TID_MASK,
                                    "corr": cann["connectionId"].fillna(-1).astype(np.int64)})
        raw.has_cann = len(raw.runtime) > 0

    raw.kernels = _kernels(con, tables, strings)
    if {"COMMUNICATION_TASK_INFO", "TASK"} <= tables:
        waits = [i for i, v in strings.items() if v == R.NOTIFY_WAIT]
        if waits:
            w = _frame(con, "SELECT t.startNs, t.endNs, c.dstRank FROM COMMUNICATION_TASK_INFO c JOIN TASK t "
                            f"ON t.globalTaskId = c.globalTaskId WHERE c.taskType IN ({','.join(map(str, waits))})")
            raw.peer_waits = pd.DataFrame({"ts": w["startNs"].astype(np.int64),
                                           "dur": (w["endNs"] - w["startNs"]).astype(np.int64),
                                           "peer": pd.to_numeric(w["dstRank"], errors="coerce").fillna(-1).astype(np.int64)})
    # Flows: host ops with a connection id -> the tasks/collectives sharing one of its connection ids.
    has = api["connectionId"].notna().to_numpy() & (kind == _PYTORCH_OP)
    src = pd.DataFrame({"host_ts": start[has], "host_tid": tid[has], "cid": api["connectionId"].to_numpy()[has]})
    src = src.merge(links, left_on="cid", right_on="id")
    k = raw.kernels
    kidx = pd.Series(np.arange(len(k)), index=k["corr"].to_numpy())
    kidx = kidx[~kidx.index.duplicated()]
    hit = kidx.reindex(src["connectionId"].to_numpy())
    ok = hit.notna().to_numpy()
    raw.flows = pd.DataFrame({"host_ts": src["host_ts"].to_numpy()[ok].astype(np.int64),
                              "host_tid": src["host_tid"].to_numpy()[ok].astype(np.int64),
                              "kernel": hit.to_numpy()[ok].astype(np.int64)})
    if "OVERLAP_ANALYSIS" in tables:
        ov = _frame(con, "SELECT startNs, endNs, type FROM OVERLAP_ANALYSIS")
        raw.overlap = pd.DataFrame({"kind": ov["type"].map(_OVERLAP_KINDS).to_numpy(dtype=object),
                                    "ts": ov["startNs"].astype(np.int64), "dur": (ov["endNs"] - ov["startNs"]).astype(np.int64)})

    metadata, extras = _metadata(con, tables, db_path)
    if analysis_path is not None and analysis_path.is_file():
        extras.update(_analysis(analysis_path))
    return raw, extras, metadata


def _call_stacks(con, strings: dict) -> dict:
    """callchainId -> frames joined by ";\\r\\n", innermost first (as the text export prints them)."""
    rows = con.execute("SELECT id, stack, stackDepth FROM PYTORCH_CALLCHAINS").fetchall()
    rows.sort(key=lambda r: (r[0], r[2]))
    out: dict = {}
    for cid, sid, _depth in rows:
        out.setdefault(cid, []).append(strings.get(sid) or "")
    return {cid: ";\r\n".join(frames) for cid, frames in out.items()}


def _kernels(con, tables: set, strings: dict) -> pd.DataFrame:
    if "TASK" not in tables:
        return R.empty(R.KERNEL_COLUMNS)
    # Tasks of collectives stay here: the builder drops them the same way for both exports (by their
    # stream and the collective's range), so text and DB give the same device timeline.
    comm_filter = ""
    info = "COMPUTE_TASK_INFO" in tables
    if "COMMUNICATION_OP" in tables and info:
        # The DB also stores each collective as one task spanning it (no compute info, the collective's
        # connection id); the text export shows it only on the HCCL process, as the collective itself.
        comm_filter = ("WHERE NOT (c.globalTaskId IS NULL AND t.connectionId IN "
                       "(SELECT connectionId FROM COMMUNICATION_OP))")
    cols = ", c.name AS cname, c.opType AS optype, c.taskType AS core" if info else ""
    join = "LEFT JOIN COMPUTE_TASK_INFO c ON c.globalTaskId = t.globalTaskId" if info else ""
    t = _frame(con, f"SELECT t.startNs, t.endNs, t.connectionId, t.streamId, t.taskType{cols} FROM TASK t {join} {comm_filter}")

    def s(v):
        return strings.get(int(v)) if pd.notna(v) else None

    task_type = np.asarray([s(v) or "" for v in t["taskType"]], dtype=object)
    cname = np.asarray([s(v) for v in t["cname"]], dtype=object) if info else np.full(len(t), None, dtype=object)
    kernels = pd.DataFrame({
        "ts": t["startNs"].astype(np.int64), "dur": (t["endNs"] - t["startNs"]).astype(np.int64),
        "name": np.where(pd.isna(cname), task_type, cname).astype(object),
        "stream": t["streamId"].astype(np.int64), "corr": t["connectionId"].fillna(-1).astype(np.int64),
        "task_type": task_type,
        "op_type": np.asarray([s(v) for v in t["optype"]], dtype=object) if info else None,
        "core": np.asarray([s(v) or "" for v in t["core"]], dtype=object) if info else "",
        "kind": "kernel",
    })
    if info:
        # Compute tasks without operator info: trace_view.json omits them too (keeps both exports alike).
        anonymous = pd.isna(cname) & np.isin(task_type, ["AI_CORE", "KERNEL_AICORE", "KERNEL_AIVEC", "AI_VECTOR_CORE"])
        kernels = kernels[~anonymous].reset_index(drop=True)
    if "COMMUNICATION_OP" in tables:
        c = _frame(con, "SELECT opName, startNs, endNs, connectionId FROM COMMUNICATION_OP")
        coll = pd.DataFrame({"ts": c["startNs"].astype(np.int64), "dur": (c["endNs"] - c["startNs"]).astype(np.int64),
                             "name": np.asarray([s(v) or "" for v in c["opName"]], dtype=object), "stream": -1,
                             "corr": c["connectionId"].fillna(-1).astype(np.int64), "task_type": "",
                             "op_type": None, "core": "HCCL", "kind": "communication"})
        kernels = pd.concat([kernels, coll], ignore_index=True)
    return kernels


def _metadata(con, tables: set, db_path: Path) -> tuple:
    md: dict = {}
    extras: dict = {}
    if "META_DATA" in tables:
        meta = dict(con.execute("SELECT name, value FROM META_DATA").fetchall())
        env = meta.pop("ENV_VARIABLES", None)
        if env:
            try:
                md["env"] = json.loads(env)
            except (ValueError, TypeError, RecursionError):
                pass
        md["db_meta"] = meta
    if "RANK_DEVICE_MAP" in tables:
        row = con.execute("SELECT rankId, deviceId FROM RANK_DEVICE_MAP").fetchone()
        if row:
            md["rank_id"], md["device_id"] = int(row[0]), int(row[1])
    if "NPU_INFO" in tables:
        row = con.execute("SELECT name FROM NPU_INFO").fetchone()
        if row:
            md["npu"] = row[0]
    return md, extras


def _analysis(path: Path) -> dict:
    con = _connect(path)
    try:
        tables = _tables(con)
        out = {}
        if "StepTraceTime" in tables:
            st = _frame(con, "SELECT * FROM StepTraceTime").rename(columns=_STEP_TRACE_COLUMNS)
            for c in st.columns:
                st[c] = pd.to_numeric(st[c], errors="coerce")
            out["step_trace_time"] = st
        if "CommAnalyzerTime" in tables:
            ct = _frame(con, "SELECT * FROM CommAnalyzerTime")
            out["communication"] = pd.DataFrame({
                "step": ct["step"].astype(str).str.removeprefix("step"), "kind": ct["type"],
                "op": ct["hccl_op_name"], "group": ct["group_name"], "start_us": ct["start_timestamp"],
                "elapse_ms": ct["elapse_time"], "transit_ms": ct["transit_time"], "wait_ms": ct["wait_time"],
                "sync_ms": ct["synchronization_time"], "idle_ms": ct["idle_time"]})
        if "CommAnalyzerBandwidth" in tables:
            # one row per (collective, link, packet size); the link totals repeat on each of its rows
            bw = _frame(con, "SELECT step, type, hccl_op_name, group_name, transport_type, transit_size, "
                             "transit_time, bandwidth FROM CommAnalyzerBandwidth")
            bw = pd.DataFrame({
                "step": bw["step"].astype(str).str.removeprefix("step"), "kind": bw["type"],
                "op": bw["hccl_op_name"], "group": bw["group_name"], "link": bw["transport_type"].astype(str),
                "size_mb": pd.to_numeric(bw["transit_size"], errors="coerce"),
                "time_ms": pd.to_numeric(bw["transit_time"], errors="coerce"),
                "bandwidth_gbps": pd.to_numeric(bw["bandwidth"], errors="coerce")})
            out["communication_bandwidth"] = bw.drop_duplicates(["step", "kind", "op", "group", "link"]) \
                .reset_index(drop=True)
        return out
    except sqlite3.DatabaseError as exc:
        raise TraceFormatError(f"{path}: unexpected analysis.db content ({exc})") from None
    finally:
        con.close()
