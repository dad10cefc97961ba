"""torch_npu profiler output (`*_ascend_pt` folders) -> `Trace`, one per rank.

Accepted paths: a `*_ascend_pt` folder, its `ASCEND_PROFILER_OUTPUT`, a parent holding several rank
folders (a cluster, also nested one level, e.g. `<out>/trace/`), or a single trace_view.json / .db file.
Text export (trace_view.json + CSVs) and DB export (ascend_pytorch_profiler[_N].db + analysis.db) are
reduced to the same raw tables (ascend_text / ascend_db) and built by one builder (ascend_build), so both
give the same trace model and the same findings.
"""
from __future__ import annotations

import re
from pathlib import Path

from .. import model
from ..errors import TraceFormatError, UserError
from . import ascend_csv
from .ascend_build import build_trace, has_kernel_keys

OUTPUT_DIR = "ASCEND_PROFILER_OUTPUT"
TRACE_VIEW = "trace_view.json"
_DB_NAME = re.compile(r"^ascend_pytorch_profiler(?:_(\d+))?\.db$")
_INFO_NAME = re.compile(r"^profiler_info(?:_(\d+))?\.json$")


def _is_rank_dir(p: Path) -> bool:
    return p.is_dir() and (p.name.endswith("_ascend_pt") or (p / OUTPUT_DIR).is_dir())


def _children(p: Path, depth: int = 2) -> list:
    """Rank folders under p, searched `depth` levels down (a cluster folder, or a run's trace/ folder)."""
    found = []
    try:
        entries = sorted(q for q in p.iterdir() if q.is_dir() and not q.name.startswith("."))
    except OSError:
        return found
    for q in entries:
        if _is_rank_dir(q):
            found.append(q)
        elif depth > 1:
            found.extend(_children(q, depth - 1))
    return found


def is_ascend_dir(path: Path) -> bool:
    p = Path(path)
    if not p.is_dir():
        return False
    if p.name == OUTPUT_DIR or _is_rank_dir(p):
        return True
    return bool(_children(p))


def rank_dirs(path: Path) -> list:
    p = Path(path)
    if p.name == OUTPUT_DIR:
        return [p.parent]
    if _is_rank_dir(p):
        return [p]
    dirs = _children(p)
    if not dirs:
        raise UserError(f"{path}: no torch_npu *_ascend_pt folder inside")
    return dirs


def is_ascend_trace_file(p: Path) -> bool:
    """A standalone trace_view.json-style file: a bare JSON array whose events carry string `ts`."""
    if not p.is_file() or p.name.endswith(".gz"):
        return False
    if p.name == TRACE_VIEW:
        return True
    try:
        with open(p, "rb") as f:
            head = f.read(4096).lstrip()
    except OSError:
        return False
    return head[:1] == b"[" and re.search(rb'"ts"\s*:\s*"\d', head) is not None


def load_ascend_rank(path: Path) -> model.Trace:
    p = Path(path)
    if p.is_file():
        if p.parent.name == OUTPUT_DIR:
            return load_ascend_rank(p.parent.parent)
        if p.suffix == ".db":
            return _load_db(p.parent, p, p.parent / "analysis.db", rank_dir=p.parent)
        return _load_text(p.parent, p, rank_dir=None)
    if p.name == OUTPUT_DIR:
        p = p.parent
    out = p / OUTPUT_DIR
    if not out.is_dir():
        out = p
    dbs = sorted(q for q in out.glob("ascend_pytorch_profiler*.db") if _DB_NAME.match(q.name))
    tv = out / TRACE_VIEW
    if tv.is_file():
        return _load_text(out, tv, rank_dir=p)
    if dbs:
        return _load_db(out, dbs[0], out / "analysis.db", rank_dir=p)
    raise TraceFormatError(f"{path}: torch_npu folder without {TRACE_VIEW} or ascend_pytorch_profiler*.db "
                           f"(the profile was not parsed: run torch_npu's offline analysis first)")


def _load_text(out: Path, tv: Path, rank_dir) -> model.Trace:
    from .ascend_text import read_trace_view

    raw = read_trace_view(tv)
    tables = ascend_csv.read_all(out) if rank_dir is not None else {}
    trace = build_trace(raw, str(rank_dir or tv), "ascend_text", tables.get("kernel_details"))
    trace.extras.update(tables)
    trace.metadata.update(raw.metadata)
    _rank_metadata(trace, rank_dir)
    _limitations(trace, raw, tables, rank_dir, text=True)
    return trace


def _load_db(out: Path, db: Path, analysis: Path, rank_dir) -> model.Trace:
    from .ascend_db import read_db

    raw, extras, md = read_db(db, analysis if analysis.is_file() else None)
    trace = build_trace(raw, str(rank_dir or db), "ascend_db")
    trace.extras.update(extras)
    trace.metadata.update(md)
    if isinstance(md.get("rank_id"), int):
        trace.rank = md["rank_id"]
    m = _DB_NAME.match(db.name)
    if trace.rank is None and m and m.group(1):
        trace.rank = int(m.group(1))
    _rank_metadata(trace, rank_dir)
    _limitations(trace, raw, extras, rank_dir, text=False)
    return trace


def _rank_metadata(trace: model.Trace, rank_dir):
    if rank_dir is None:
        return
    rank_dir = Path(rank_dir)
    for info in sorted(rank_dir.glob("profiler_info*.json")):
        m = _INFO_NAME.match(info.name)
        if not m:
            continue
        data = ascend_csv.read_json(info)
        if not isinstance(data, dict):
            continue
        cfg = data.get("config")
        cfg = cfg if isinstance(cfg, dict) else {}
        trace.metadata["profiler_config"] = cfg
        experimental = cfg.get("experimental_config")
        level = experimental.get("_profiler_level") if isinstance(experimental, dict) else None
        if isinstance(level, str) and level:
            trace.metadata["profiler_level"] = level
        for k, v in data.items():
            if k not in ("config", "start_info", "end_info", "rank_id"):
                trace.metadata[k] = v   # versions and the like, when the torch_npu version writes them
        rid = data.get("rank_id")
        if trace.rank is None:
            if isinstance(rid, int) and rid >= 0:
                trace.rank = rid
            elif m.group(1):
                trace.rank = int(m.group(1))
    meta = rank_dir / "profiler_metadata.json"
    if meta.is_file():
        data = ascend_csv.read_json(meta)
        if isinstance(data, dict):
            env = data.get("ENV_VARIABLES")
            if isinstance(env, dict):
                trace.metadata["env"] = env
            dist = data.get("distributed_args")
            if isinstance(dist, dict):
                trace.metadata["distributed"] = dist
                ws = dist.get("world_size")
                if isinstance(ws, int):
                    trace.world_size = ws


def _limitations(trace: model.Trace, raw, tables: dict, rank_dir, text: bool):
    lim = trace.limitations
    level = trace.metadata.get("profiler_level")
    if not raw.has_cann:
        why = f"profiler_level={level}" if level else "the CANN layer was not recorded"
        lim.append(f"No CANN layer ({why}): stream synchronizations (aclrtSynchronizeStream*), online op "
                   "compilation (aclopCompileAndExecute) and launch calls are absent, so syncs cannot be "
                   "attributed to source lines and host launch overhead cannot be measured. Profile with "
                   "profiler_level=Level1 to get them.")
    if len(trace.kernels) == 0:
        lim.append("No device tasks in the trace (CPU activity only): device busy/free time and kernel "
                   "ranking cannot be computed.")
    if len(trace.steps) == 0:
        lim.append("No ProfilerStep ranges: per-step averages are over the whole trace, counted as one step.")
    if (trace.ops["loc"] < 0).all():
        lim.append("No Python call stacks (recorded without with_stack=True): findings cannot point at "
                   "source lines.")
    if rank_dir is None:
        lim.append("A lone trace file was given: the CSV summaries, profiler_info and profiler_metadata "
                   "next to it are not read (rank, environment variables and step_trace_time unknown).")
        return
    if "env" not in trace.metadata:
        lim.append("profiler_metadata.json / ENV_VARIABLES is missing: the environment variables of the run "
                   "are unknown, so environment checks cannot run.")
    if text:
        if not has_kernel_keys(tables.get("kernel_details")):
            lim.append("kernel_details.csv is missing (or lacks Name / Start Time(us)): the accelerator core (AI_CORE / AI_CPU ...) and operator "
                       "type of each device task fall back to the trace's task type.")
        if "step_trace_time" not in tables and "overlap" not in trace.extras:
            lim.append("step_trace_time.csv and the Overlap Analysis are missing: the step split into "
                       "computing / communication / free cannot be taken from torch_npu's own analysis.")
        if "communication" not in tables and (trace.kernels["kind"] == "communication").any():
            lim.append("communication.json is missing: per-collective wait and transit times are unknown.")
    elif "step_trace_time" not in tables:
        lim.append("analysis.db (StepTraceTime) is missing: the step split into computing / communication / "
                   "free is recomputed from the Overlap Analysis instead of taken from torch_npu.")
