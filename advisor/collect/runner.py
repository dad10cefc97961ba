"""Parent side of `npu-advise profile`: launch the script under the collector and read back what happened.

The script runs in a child process (`python -m npu_advise.collect.bootstrap CONFIG -- SCRIPT ARGS`, or
the same module under `torch.distributed.run` for several ranks), so a crash, `sys.exit` or `os._exit`
in it cannot take npu-advise down. Each rank leaves `collection.rank{R}.json`; they are merged into
`<out>/collection.json`, and the outcome decides between "analyze the trace" and a one-line error. The
script's stdout and stderr are relayed without the profiler's log lines (output_relay).
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from ..errors import UserError
from .bootstrap import RECORD_NAME
from .output_relay import OutputRelay

BOOTSTRAP_MODULE = "npu_advise.collect.bootstrap"
TORCHRUN_MODULE = "torch.distributed.run"
PROFILER_LOG = "profiler.log"        # the profiler's own log lines, kept off the user's terminal


class ScriptFailed(UserError):
    """The script failed: before anything was profiled, or after (the report then covers what was captured)."""


@dataclass
class ProfileRequest:
    script: Path
    args: list
    out_dir: Path
    wait: int = 1
    warmup: int = 1
    active: int = 3
    stop: bool = True
    python: str = sys.executable
    window_seconds: Optional[float] = None
    torchrun_args: Optional[list] = None     # None: a single process; else options for torchrun
    placement: bool = True                   # track where tensors would live while recording
    quiet: bool = False                      # the collector's own info lines off (--quiet)

    def config(self) -> dict:
        return {"out_dir": str(self.out_dir.resolve()), "wait": self.wait, "warmup": self.warmup,
                "active": self.active, "stop": self.stop, "window_seconds": self.window_seconds,
                "placement": self.placement, "quiet": self.quiet}


@dataclass
class CollectionResult:
    """What the run left behind; `problem` is None when everything went as planned."""

    collection: dict
    trace_dir: Path
    traces: list = field(default_factory=list)
    problem: Optional[str] = None            # what went differently from plan; goes into the report
    failed: bool = False                     # the script itself failed (the tool then exits non-zero)


def default_out_dir(script: Path) -> Path:
    return Path("npu_advise_out") / f"{script.stem}-{time.strftime('%Y%m%d-%H%M%S')}"


def build_command(req: ProfileRequest, config_path: Path) -> list:
    tail = ["-m", BOOTSTRAP_MODULE, str(config_path), "--", str(req.script), *req.args]
    if req.torchrun_args is None:
        return [req.python, *tail]
    return [req.python, "-m", TORCHRUN_MODULE, *req.torchrun_args, *tail]


def _child_env(python: str) -> dict:
    """The user's environment; for another interpreter without npu-advise, make this package importable."""
    env = dict(os.environ)
    # Not realpath: a venv's python is a symlink to the base interpreter, which lacks the venv's packages.
    if os.path.abspath(python) == os.path.abspath(sys.executable):
        return env
    probe = subprocess.run([python, "-c", f"import {BOOTSTRAP_MODULE}"], env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if probe.returncode == 0:
        return env
    # Expose only the `npu_advise` package (a symlink), not the folders around it.
    import npu_advise
    shim = Path(tempfile.mkdtemp(prefix="npu_advise_path_"))
    (shim / "npu_advise").symlink_to(Path(npu_advise.__file__).resolve().parent, target_is_directory=True)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(shim), env.get("PYTHONPATH")) if p)
    return env


def run_collection(req: ProfileRequest, echo=print) -> CollectionResult:
    script = Path(req.script)
    if not script.exists():
        raise UserError(f"{script}: no such file")
    if not script.is_file():
        raise UserError(f"{script}: not a file (give the training script to run)")
    if req.active < 1 or req.wait < 0 or req.warmup < 0:
        raise UserError("--active must be at least 1; --wait and --warmup at least 0")
    if req.window_seconds is not None and req.window_seconds <= 0:
        raise UserError("--window-seconds must be positive")
    if shutil.which(req.python) is None:
        raise UserError(f"{req.python}: interpreter not found or not executable")
    out_dir = Path(req.out_dir)
    trace_dir = out_dir / "trace"
    if trace_dir.exists() and any(trace_dir.iterdir()):
        raise UserError(f"{out_dir}: already holds a trace; choose another --out")
    out_dir.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="npu_advise_") as tmp:
        config_path = Path(tmp) / "config.json"
        config_path.write_text(json.dumps(req.config()), encoding="utf-8")
        cmd = build_command(req, config_path)
        env = _child_env(req.python)
        started = time.time()
        sys.stdout.flush()          # ours first: the relay writes the script's output to fd 1 directly
        relay = OutputRelay()
        try:
            returncode = subprocess.run(cmd, env=env, stdout=relay.stdout, stderr=relay.stderr).returncode
            elapsed = time.time() - started
        except FileNotFoundError:
            raise UserError(f"{req.python}: interpreter not found") from None
        except KeyboardInterrupt:
            raise UserError("interrupted; the script was stopped") from None
        finally:
            profiler_log = relay.finish()

    records = _read_records(out_dir)
    collection = _merge(req, records, returncode, elapsed, cmd)
    if profiler_log:
        (out_dir / PROFILER_LOG).write_text("\n".join(profiler_log) + "\n", encoding="utf-8")
        collection["profiler_log"] = {"file": PROFILER_LOG, "lines": len(profiler_log)}
    (out_dir / "collection.json").write_text(json.dumps(collection, indent=2, default=str), encoding="utf-8")
    traces = sorted(p for p in trace_dir.glob("*") if not p.name.startswith(".")) if trace_dir.exists() else []
    if not traces:
        raise _no_trace_error(req, collection, returncode)
    rec = _failing_record(collection)
    failed = rec.get("outcome") not in ("stopped", "completed") or bool(rec.get("exit_code"))
    return CollectionResult(collection=collection, trace_dir=trace_dir, traces=traces,
                            problem=_partial_problem(req, collection), failed=failed)


def _read_records(out_dir: Path) -> list:
    records = []
    for p in sorted(out_dir.glob(RECORD_NAME.format(rank="*"))):
        try:
            records.append(json.loads(p.read_text(encoding="utf-8")))
        except (OSError, ValueError):
            continue
        p.unlink()
    return sorted(records, key=lambda r: r.get("rank", 0))


# Per-rank fields kept in collection["ranks"]; the rest comes from rank 0 (same job, same settings).
_RANK_FIELDS = ("rank", "hostname", "pid", "outcome", "exit_code", "error", "steps_seen", "steps_recorded",
                "exported", "trace", "stopped_early", "note", "collector_error")


def _merge(req: ProfileRequest, records: list, returncode: int, elapsed: float, cmd: list) -> dict:
    head = dict(records[0]) if records else {}
    for k in ("pid", "note", "collector_error"):
        head.pop(k, None)
    collection = {
        "schema_version": 1,
        **head,
        "script": str(req.script),
        "args": list(req.args),
        "cwd": os.getcwd(),
        "command": " ".join(shlex.quote(c) for c in cmd),
        "launcher": "torchrun" if req.torchrun_args is not None else "python",
        "process_exit_code": returncode,
        "wall_seconds": round(elapsed, 3),
        "ranks": [{k: r.get(k) for k in _RANK_FIELDS if k in r} for r in records],
    }
    if req.torchrun_args is not None:
        collection["torchrun_args"] = list(req.torchrun_args)
        # Every rank must have recorded the same window for a fair comparison.
        collection["steps_recorded"] = min((r.get("steps_recorded", 0) for r in records), default=0)
        collection["stopped_early"] = bool(records) and all(r.get("stopped_early") for r in records)
    return collection


def _steps_needed(req: ProfileRequest) -> int:
    return req.wait + req.warmup + 1


def _failing_record(collection: dict) -> dict:
    for r in collection.get("ranks", []):
        if r.get("outcome") not in ("stopped", "completed") or r.get("exit_code"):
            return r
    return collection


def _no_trace_error(req: ProfileRequest, collection: dict, returncode: int) -> UserError:
    name = req.script.name
    if not collection.get("ranks"):
        how = f"was killed by signal {-returncode}" if returncode < 0 else f"exited with status {returncode}"
        return ScriptFailed(f"{name}: the process {how} before npu-advise could record anything "
                            f"(a crash, or the interpreter failed to start)")
    rec = _failing_record(collection)
    outcome, code, seen = rec.get("outcome"), rec.get("exit_code"), collection.get("steps_seen", 0)
    rank = f" (rank {rec['rank']})" if collection.get("world_size", 1) > 1 and "rank" in rec else ""
    if outcome == "no_torch":
        return UserError(f"{req.python} cannot import torch ({rec.get('error')}); "
                         f"choose the training environment's interpreter with --python")
    if outcome == "exception":
        return ScriptFailed(f"{name}{rank} failed before the first profiled step: {rec.get('error')}")
    if outcome == "os_exit":
        return ScriptFailed(f"{name}{rank} called os._exit({code}) before the first profiled step")
    if outcome == "sys_exit" and code:
        return ScriptFailed(f"{name}{rank} exited with status {code} (sys.exit) before the first profiled step")
    if outcome == "interrupted":
        return ScriptFailed(f"{name}{rank} was interrupted before the first profiled step")
    if outcome in ("running", "starting"):
        how = f"signal {-returncode}" if returncode < 0 else f"exit status {returncode}"
        return ScriptFailed(f"{name}{rank} ended abruptly ({how}) before the first profiled step")
    if req.window_seconds is None and seen == 0:
        return ScriptFailed(f"{name} finished without calling optimizer.step(), so npu-advise found no "
                            f"training steps to profile; use --window-seconds S to profile a fixed "
                            f"wall-time window instead")
    if req.window_seconds is None:
        return ScriptFailed(f"{name} finished after {seen} optimizer step{'s' if seen != 1 else ''}; profiling "
                            f"needs at least {_steps_needed(req)} (--wait {req.wait} + --warmup {req.warmup} "
                            f"+ 1 recorded): lower --wait/--warmup or let the script run longer")
    return ScriptFailed(f"{name}: no trace was written ({outcome}, exit status {code})")


def _partial_problem(req: ProfileRequest, collection: dict) -> Optional[str]:
    """A sentence for the report when the trace exists but the run did not go as planned."""
    rec = _failing_record(collection)
    outcome, code = rec.get("outcome"), rec.get("exit_code")
    recorded = collection.get("steps_recorded", 0)
    rank = f" (rank {rec['rank']})" if collection.get("world_size", 1) > 1 and "rank" in rec else ""
    captured = f"{recorded} profiled step{'s' if recorded != 1 else ''}"
    if outcome == "exception":
        return f"The script{rank} failed after {captured}: {rec.get('error')}. The report covers what was captured."
    if outcome == "os_exit":
        return f"The script{rank} called os._exit({code}) after {captured}. The report covers what was captured."
    if outcome == "sys_exit" and code:
        return f"The script{rank} exited with status {code} after {captured}. The report covers what was captured."
    if outcome in ("running", "starting", "interrupted"):
        return f"The script{rank} ended abruptly after {captured}. The report covers what was captured."
    if req.window_seconds is None and recorded < req.active:
        return (f"The script finished after {captured} of the {req.active} requested; "
                f"the report averages over those.")
    return None
