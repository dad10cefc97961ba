"""Child-process entry point: runs the user's script under the profiler, as `python SCRIPT ARGS` would.

    python -m npu_advise.collect.bootstrap CONFIG.json -- SCRIPT [ARGS]...

(and the same after `torchrun ... -m`). The script runs as `__main__` via `runpy.run_path` with
`sys.argv = [SCRIPT, *ARGS]`, `sys.path[0]` = the script's directory and the inherited working
directory. Whatever the script does (finishes, raises, `sys.exit`, `os._exit`, is stopped after the
profiled steps), this writes `<out>/collection.rank{R}.json`, which the parent merges into
`collection.json`. Imports only the standard library, torch and this package's collect modules.
"""
from __future__ import annotations

import json
import os
import runpy
import sys
import time
import traceback
from pathlib import Path

RECORD_NAME = "collection.rank{rank}.json"


def record_path(out_dir, rank: int) -> Path:
    return Path(out_dir) / RECORD_NAME.format(rank=rank)


def _write_json(path: Path, data: dict):
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str), encoding="utf-8")
    os.replace(tmp, path)


def _parse(argv):
    if len(argv) < 3 or argv[1] != "--":
        raise SystemExit("usage: python -m npu_advise.collect.bootstrap CONFIG.json -- SCRIPT [ARGS]...")
    return argv[0], argv[2], list(argv[3:])


def enter_script(argv) -> tuple:
    """(config, script, args) of a child's `CONFIG.json -- SCRIPT [ARGS]...` command line (None: sys.argv), with
    sys.argv and sys.path[0] set as `python SCRIPT ARGS` sets them: the script must not see that it runs in
    one of our children (the collector's or the verification stage's)."""
    config_path, script, script_args = _parse(sys.argv[1:] if argv is None else argv)
    config = json.loads(Path(config_path).read_text(encoding="utf-8"))
    sys.argv = [script] + script_args
    sys.path[0] = os.path.dirname(os.path.realpath(script))
    return config, script, script_args


def _exit_code(exc: SystemExit) -> int:
    """What the interpreter would exit with for this SystemExit (printing a str code like it does)."""
    code = exc.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _print_user_traceback(exc: BaseException, script: str):
    """The traceback Python would print, without our and runpy's frames above the script."""
    tb = exc.__traceback__
    target = os.path.realpath(script)
    t = tb
    while t is not None and os.path.realpath(t.tb_frame.f_code.co_filename) != target:
        t = t.tb_next
    traceback.print_exception(type(exc), exc, t if t is not None else tb)
    sys.stderr.flush()


def _last_error_line(exc: BaseException) -> str:
    return traceback.format_exception_only(type(exc), exc)[-1].strip()


def main(argv=None) -> int:
    config, script, script_args = enter_script(argv)
    out_dir = Path(config["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    rank = int(os.environ.get("RANK", "0") or 0)
    path = record_path(out_dir, rank)
    record = {"rank": rank, "pid": os.getpid(), "script": script, "args": script_args,
              "outcome": "starting", "exit_code": None, "error": None, "stopped_early": False,
              "started_at": time.strftime("%Y-%m-%dT%H:%M:%S")}


    try:
        import torch  # noqa: F401
    except Exception as exc:  # the chosen interpreter has no working torch
        record.update(outcome="no_torch", exit_code=4, error=_last_error_line(exc), python=sys.executable)
        _write_json(path, record)
        return 4

    from .source_marks import MarkState, SourceMarkMode, install, uninstall
    from .steps import Collector, CollectorStop

    marks = MarkState()
    collector = Collector(config, marks)
    mode = SourceMarkMode(marks, placement=collector.placement)
    # Once the trace is written (--no-stop), the rest of the run should not pay for the mode.
    collector.on_finished = lambda: uninstall(mode)
    owner = os.getpid()

    def save(**updates):
        record.update(updates)
        record.update(collector.record)
        record.update(collector.summary())
        record["ended_at"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        _write_json(path, record)

    real_os_exit = os._exit

    def os_exit(code):
        # DataLoader workers forked from the script inherit this: they just exit.
        if os.getpid() == owner:
            try:
                collector.stop_profiler()
            except Exception as exc:
                record["collector_error"] = _last_error_line(exc)
            save(outcome="os_exit", exit_code=int(code), stopped_early=False)
            sys.stdout.flush()
            sys.stderr.flush()
        real_os_exit(code)

    os._exit = os_exit
    collector.before_hard_exit = lambda: save(outcome="stopped", exit_code=0, stopped_early=True,
                                              note="the script caught npu-advise's SystemExit; "
                                                   "the process was ended with os._exit(0)")
    save(outcome="running")

    outcome, code, error = "completed", 0, None
    try:
        collector.start()
        install(mode)
        runpy.run_path(script, run_name="__main__")
    except CollectorStop:
        outcome = "stopped"
    except SystemExit as exc:
        code = _exit_code(exc)
        outcome = "sys_exit"
        if code:
            error = f"exit status {code} (sys.exit)"
    except KeyboardInterrupt:
        outcome, code, error = "interrupted", 130, "KeyboardInterrupt"
    except BaseException as exc:
        _print_user_traceback(exc, script)
        outcome, code, error = "exception", 1, _last_error_line(exc)
    finally:
        uninstall(mode)
        # Writes whatever was recorded if the script ended inside the active window.
        try:
            collector.stop_profiler()
        except Exception as exc:
            record["collector_error"] = _last_error_line(exc)
        os._exit = real_os_exit
    if outcome == "completed" and collector.stop_requested:
        outcome = "stopped"   # the script caught our stop and then ended by itself
    if outcome == "stopped":
        _destroy_process_group()
    save(outcome=outcome, exit_code=code, error=error, stopped_early=outcome == "stopped")
    return code


def _destroy_process_group():
    """We cut a distributed script short at the same step on every rank: leave the group cleanly."""
    try:
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except Exception:
        pass


if __name__ == "__main__":
    sys.exit(main())
