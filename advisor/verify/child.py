"""Child-process entry point of the verification run: the script as `python SCRIPT ARGS` would run it, with
each candidate installed beside the function it rewrites, no profiler.

    python -m npu_advise.verify.child SPEC.json -- SCRIPT [ARGS]...

SPEC: {"results": path, "max_calls": N, "max_steps": S, "call_timeout_s": T, "window_seconds": W, "targets": [{"id", "file",
"function", "function_source", "npu_calls", "after"}]}; "after": ids of the candidates an alternative stands in
for (it is compared once they all failed). The files holding targets are compiled from their own
source with the pairing statements added (swap.instrument): the script itself as `__main__`, other
modules through an import hook. The run stops after S optimizer steps (or, for a --window-seconds profile, at the
first target call after that window), or as soon as every target has been called N times; whatever the script does (finishes, raises, sys.exit, os._exit), the results file
says how far it got.
"""
from __future__ import annotations

import builtins
import importlib.machinery
import importlib.util
import json
import os
import sys
import types
from pathlib import Path

from npu_advise.collect.bootstrap import _exit_code, _last_error_line, _print_user_traceback, enter_script

from .swap import PAIR_BUILTIN, instrument


def main(argv=None) -> int:
    spec, script, _ = enter_script(argv)
    results = Path(spec["results"])
    try:
        import torch  # noqa: F401
    except Exception as exc:
        results.write_text(json.dumps({"targets": [], "outcome": f"no torch: {_last_error_line(exc)}"}), encoding="utf-8")
        return 4
    from .session import Session, StopRun

    session = Session(spec["targets"], results, int(spec["max_calls"]), float(spec["call_timeout_s"]),
                      spec.get("window_seconds"))
    setattr(builtins, PAIR_BUILTIN, lambda tid, obj, decorator=None: session.targets[tid].pair(obj, decorator))
    from . import optimizers

    watched = [t for t in session.targets.values() if isinstance(t, optimizers.OptimizerTarget)]
    optimizers.install(watched)
    by_file = {}
    for t in spec["targets"]:
        if t.get("kind") != "optimizer":
            by_file.setdefault(os.path.realpath(t["file"]), {}).setdefault(t["function"], []).append(t["id"])
    main_file = os.path.realpath(script)
    sys.meta_path.insert(0, _Finder(by_file, session, skip=main_file))

    max_steps = int(spec.get("max_steps") or 0)
    stop = {"requested": False}

    def on_step(optimizer, args, kwargs):
        if any(optimizer is t.reference for t in watched):
            return                        # the stage's own reference optimizer, not a step of the script
        session.step += 1
        if stop["requested"]:             # the script caught our stop and went on
            session.run_outcome = "stopped"
            session.save()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(0)
        if session.all_done() or (max_steps and session.step >= max_steps):
            stop["requested"] = True
            raise StopRun()

    from torch.optim.optimizer import register_optimizer_step_post_hook
    register_optimizer_step_post_hook(on_step)
    real_os_exit = os._exit

    def os_exit(code):
        session.run_outcome = f"the script called os._exit({code})"
        session.save()
        real_os_exit(code)

    os._exit = os_exit
    session.save()
    code = 0
    try:
        _run_script(script, by_file.get(main_file, {}), session)
        session.run_outcome = "completed"
    except StopRun:
        session.run_outcome = "stopped"
    except SystemExit as exc:
        code = _exit_code(exc)
        session.run_outcome = f"the script exited with status {code} (sys.exit)" if code else "completed"
    except KeyboardInterrupt:
        session.run_outcome, code = "interrupted", 130
    except BaseException as exc:
        _print_user_traceback(exc, script)
        session.run_outcome, code = f"the script raised {_last_error_line(exc)}", 1
    finally:
        os._exit = real_os_exit
        session.in_progress = None
        session.save()
    return code


def _run_script(script: str, targets: dict, session) -> None:
    """As runpy.run_path(script, run_name="__main__"), from the instrumented source when it holds targets."""
    if not targets:
        import runpy
        runpy.run_path(script, run_name="__main__")
        return
    source = importlib.util.decode_source(Path(script).read_bytes())
    code, problems = instrument(source, script, targets)
    _report_problems(problems, targets, session)
    module = types.ModuleType("__main__")
    module.__dict__.update(__file__=script, __cached__=None, __loader__=None, __package__=None, __spec__=None,
                           __builtins__=builtins)
    saved = sys.modules.get("__main__")
    sys.modules["__main__"] = module
    try:
        exec(code, module.__dict__)
    finally:
        sys.modules["__main__"] = saved


def _report_problems(problems: dict, targets: dict, session) -> None:
    for name, why in problems.items():
        for tid in targets[name]:
            session.targets[tid].unverifiable(f"cannot be swapped: {why}")
    if problems:
        session.save()


class _Finder:
    """Meta-path finder: modules whose file holds targets load from the instrumented source."""

    def __init__(self, by_file: dict, session, skip: str):
        self.by_file, self.session, self.skip = by_file, session, skip

    def find_spec(self, fullname, path=None, target=None):
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or not spec.origin or not isinstance(spec.loader, importlib.machinery.SourceFileLoader):
            return None
        real = os.path.realpath(spec.origin)
        if real == self.skip or real not in self.by_file:
            return None
        spec.loader = _Loader(fullname, spec.origin, self.by_file[real], self.session)
        return spec

    def invalidate_caches(self):
        pass


class _Loader(importlib.machinery.SourceFileLoader):
    def __init__(self, fullname, path, targets, session):
        super().__init__(fullname, path)
        self.targets, self.session = targets, session

    def get_code(self, fullname):
        # Never from or into the bytecode cache: the instrumented code must not outlive this run.
        source = importlib.util.decode_source(self.get_data(self.path))
        code, problems = instrument(source, self.path, self.targets)
        _report_problems(problems, self.targets, self.session)
        return code


if __name__ == "__main__":
    sys.exit(main())
