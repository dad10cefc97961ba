"""The recommender's results kept between runs, under the SHA-256 of everything they were computed from.

`recommend()` is a function of the analyzers' findings, the trace, the project's source files and
npu-advise's own code. `analyze` and `verify` of a profile whose code has not changed since `profile`
analyzed it would otherwise parse every file with libcst and re-run every codemod again (the libcst import
alone is ~0.7 s). The key hashes: npu-advise's source and data files, the extra generator modules named in
the environment and their source, the project root and working directory, the findings as serialized, the
trace's tables and metadata, and the path and content of every file the recommender can read (the files the
trace points at, the project's .py files as `Sources.project_files` lists them, its launch scripts). So any
change to any of them is a miss; a hit restores each finding's fix and details, the new findings and the candidates.

Entries are pickles under `$XDG_CACHE_HOME/npu-advise/recommend` (written atomically, the 64 newest kept; a cache
that cannot be written costs only speed). NPU_ADVISE_NO_CACHE=1 turns it off; so do extra generator modules (NPU_ADVISE_GENERATORS).
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
from pathlib import Path
from typing import Optional

NO_CACHE_ENV = "NPU_ADVISE_NO_CACHE"
FORMAT = b"recommend-cache-1"
MAX_ENTRIES = 64
_TRACE_TABLES = ("ops", "runtime", "kernels", "annotations", "steps", "locations", "calls")
_CODE_SUFFIXES = (".py", ".json", ".toml", ".txt")
_code_digest: list = []


def default_dir() -> Optional[Path]:
    from .registry import EXTRA_MODULES_ENV

    # Extra generator modules are code whose inputs (environment, files) the key cannot know: never cached.
    if os.environ.get(NO_CACHE_ENV, "") not in ("", "0") or os.environ.get(EXTRA_MODULES_ENV, "").strip():
        return None
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "npu-advise" / "recommend"


def code_digest() -> bytes:
    """SHA-256 of npu-advise's own code and data (every package folder), once per process."""
    if not _code_digest:
        import npu_advise
        from npu_advise import analyzers, recommendations

        h = hashlib.sha256(FORMAT)
        for package in (npu_advise, analyzers, recommendations):
            folder = Path(package.__file__).parent
            for p in sorted(folder.rglob("*")):
                if p.suffix in _CODE_SUFFIXES and "__pycache__" not in p.parts:
                    h.update(p.relative_to(folder).as_posix().encode() + b"\0" + p.read_bytes() + b"\0")
        _code_digest.append(h.digest())
    return _code_digest[0]


def key(trace, findings: list, root: Optional[Path], files: list) -> str:
    import pandas as pd

    from .registry import EXTRA_MODULES_ENV

    h = hashlib.sha256(code_digest())
    extra = [m.strip() for m in os.environ.get(EXTRA_MODULES_ENV, "").split(",") if m.strip()]
    files = list(files) + [_origin(m) for m in extra]
    h.update(json.dumps([extra, str(root), os.getcwd(), trace.path, trace.fmt,
                         trace.device_type, trace.rank, trace.world_size, trace.metadata,
                         [f.to_dict() for f in findings]], sort_keys=True, default=str).encode())
    for name in _TRACE_TABLES:
        df = getattr(trace, name)
        h.update(f"{name}:{len(df)}:{','.join(map(str, df.columns))}".encode())
        if len(df):
            h.update(pd.util.hash_pandas_object(df, index=False).to_numpy().tobytes())
    for p in sorted(set(map(str, files))):
        try:
            content = Path(p).read_bytes()
        except OSError:
            content = b"\0missing"
        h.update(p.encode() + b"\0" + hashlib.sha256(content).digest())
    return h.hexdigest()


def _origin(module: str) -> str:
    """The source file of an extra generator module (its code is part of the key), or its name."""
    import importlib.util

    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        spec = None
    return spec.origin if spec is not None and spec.origin else module


def load(folder: Path, k: str):
    try:
        with open(folder / k[:2] / f"{k}.pkl", "rb") as f:
            return pickle.load(f)
    except Exception:       # absent, truncated or from another version: recompute
        return None


def store(folder: Path, k: str, value) -> None:
    target = folder / k[:2] / f"{k}.pkl"
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
        os.replace(tmp, target)
        _prune(folder)
    except (OSError, pickle.PicklingError, TypeError, AttributeError):
        pass        # a read-only cache, or an unpicklable extra generator's result, only costs speed


def _prune(folder: Path) -> None:
    """Keep the MAX_ENTRIES most recently written entries (each profile of changed code adds one)."""
    entries = sorted(folder.glob("*/*.pkl"), key=lambda p: p.stat().st_mtime_ns)
    for old in entries[:-MAX_ENTRIES]:
        old.unlink(missing_ok=True)
