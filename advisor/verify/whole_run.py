"""Whole-run check: for a rewrite that cannot run beside the original function -- it changes the function that
drives the training loop (the function never returns within the verification run), or module-level code --
run the script once as it is and once with the rewritten file, and compare the trainings.

Both runs stop after the same optimizer steps. After every step each run records, for every parameter of the
stepped optimizer, the float64 sum and absolute sum; the rewrite is verified when every recorded value agrees
(<= RTOL of the parameter's absolute sum) at every step, and at least one rewritten line ran during the
training steps (line events of the rewritten file are traced from the first step on). It is rejected when
the patched run raises, stops early or trains differently. The candidate must be on the stack at every
optimizer step of the unpatched run (it drives the loop), else the check would prove nothing and is not run.
Only rewrites whose generators prove that nothing but the training can change are checked so
(WHOLE_RUN_REWRITES).

    python -m npu_advise.verify.whole_run SPEC.json -- SCRIPT [ARGS]...

SPEC: {"results": path, "max_steps": S, "patch": {"file", "source"} | null}.
"""
from __future__ import annotations

import builtins
import difflib
import importlib.machinery
import importlib.util
import json
import os
import sys
import tempfile
import time
import types
from pathlib import Path

RTOL = 1e-5
CHILD_MODULE = "npu_advise.verify.whole_run"
# The rewrites this check can prove: their generators show from the syntax that nothing but the training (and
# when the log lines are printed) can change, so equal trainings are their whole proof. A rewrite of the loop
# that could change something else (a metric computed on the host, a saved file) is not proven by it.
# masked_losses: the new expression equals the old one wherever the mask is a bool tensor (else it raises).
WHOLE_RUN_REWRITES = ("rewrites.log_reads", "rewrites.device_math", "rewrites.device_checks", "rewrites.masked_losses")


# ----------------------------------------------------------------------------------------------
# Parent side
# ----------------------------------------------------------------------------------------------
def verify_whole_runs(report, candidates: dict, collection: dict, stats, timeout_s=None, log=None, echo=None) -> None:
    """Give a whole-run verdict to the report's candidates the function-level check could not run."""
    from npu_advise.recommendations.candidates import MODULE_LEVEL

    from .stage import _not_runnable

    pending = {}                                        # (file, function, new source) -> (candidate, [findings])
    for f in report.findings:
        c = candidates.get(f.id)
        v = (f.fix.verification or {}) if f.fix is not None else {}
        if c is None or c.catalog_ref not in WHOLE_RUN_REWRITES or v.get("status") != "not_verifiable" \
                or v.get("calls") or c.requires or c.npu_calls:
            continue
        if c.function == MODULE_LEVEL:
            if not collection.get("script") or collection.get("launcher") == "torchrun" or not _unchanged(c):
                continue
        elif _not_runnable(c, collection) is not None:
            continue
        key = (str(c.path), c.function, c.new_source)
        pending.setdefault(key, (c, []))[1].append(f)
    if not pending:
        return
    max_steps = _max_steps(collection)
    if not max_steps:
        return
    if echo is not None:
        echo(f"npu-advise: whole-run check of {len(pending)} rewrite{'s' if len(pending) != 1 else ''} of a training "
             f"loop or module-level code: {len(pending) + 1} runs of up to {max_steps} optimizer steps")
    reference, outcome = _run(None, collection, max_steps, timeout_s, log, stats)
    steps = reference.get("steps") or []
    if not steps:
        return
    for (path, function, _), (c, findings) in pending.items():
        drives = _drives(reference, path, c.function)
        if not drives:
            continue
        result = _compare(reference, c, collection, max_steps, timeout_s, log, stats)
        for f in findings:
            _record(f, c, dict(result))


def _record(finding, candidate, result: dict) -> None:
    """As the function-level check records its result: verified makes the fix auto-applicable when only what
    verification proves was missing; rejected never is."""
    from . import summary

    result["summary"] = summary.describe(result)
    finding.fix.verification = result
    if result["status"] == "rejected":
        finding.fix.auto_applicable = False
    elif result["status"] == "verified" and getattr(candidate, "applicable_when_verified",
                                                    bool(candidate.needs_verification) or candidate.auto_applicable):
        finding.fix.auto_applicable = True


def _unchanged(c) -> bool:
    from npu_advise.apply.safety import sha256_text
    try:
        return sha256_text(Path(c.path).read_text(encoding="utf-8")) == sha256_text(c.old_source)
    except (OSError, UnicodeDecodeError):
        return False


def _max_steps(collection: dict) -> int:
    if collection.get("mode") == "window":
        return 0
    s = collection.get("schedule") or {}
    return int(s.get("wait", 1)) + int(s.get("warmup", 1)) + int(s.get("active", 3))


def _drives(reference: dict, path: str, function: str) -> bool:
    """The function (or the file's module code) was on the stack at every optimizer step of the run."""
    name = "<module>" if function in (None, "<module>") else function
    real = os.path.realpath(path)
    return any(os.path.realpath(f) == real and (q == name or q == name.rsplit(".", 1)[-1])
               for f, q in reference.get("driving") or [])


def _compare(reference: dict, c, collection: dict, max_steps: int, timeout_s, log, stats) -> dict:
    patched, outcome = _run({"file": str(c.path), "source": c.new_source}, collection, max_steps, timeout_s, log, stats)
    ref_steps, new_steps = reference["steps"], patched.get("steps") or []
    base = {"check": "whole run", "unit": "optimizer steps", "run_outcome": outcome}
    if len(new_steps) < len(ref_steps):
        return dict(base, status="rejected", calls=len(new_steps),
                    reason=f"the run with the rewrite stopped after {len(new_steps)} of {len(ref_steps)} optimizer "
                           f"steps ({outcome})")
    worst = 0.0
    for k, (a, b) in enumerate(zip(ref_steps, new_steps), 1):
        if len(a) != len(b):
            return dict(base, status="rejected", calls=k,
                        reason=f"step {k}: {len(b)} parameters stepped with the rewrite, {len(a)} without")
        for j, ((sa, aa), (sb, ab)) in enumerate(zip(a, b)):
            diff = max(abs(sa - sb), abs(aa - ab))
            if not diff <= RTOL * max(aa, ab, 1e-30):
                return dict(base, status="rejected", calls=k,
                            reason=f"step {k}: parameter {j} differs (sum {sa:.8g} without the rewrite, {sb:.8g} "
                                   f"with it): the training changed")
            worst = max(worst, diff)
    changed = _changed_lines(c.old_source, c.new_source)
    ran = changed & set(patched.get("lines") or [])
    if not ran:
        return dict(base, status="not_verifiable", calls=0,
                    reason="none of the rewritten lines ran during the optimizer steps of the run")
    return dict(base, status="verified", calls=len(ref_steps), reason=None, max_abs_diff={"parameters": worst},
                gradients=None)


def _changed_lines(old: str, new: str) -> set:
    out = set()
    sm = difflib.SequenceMatcher(None, old.split("\n"), new.split("\n"), autojunk=False)
    for tag, _, _, j1, j2 in sm.get_opcodes():
        if tag in ("replace", "insert"):
            out.update(range(j1 + 1, j2 + 1))
    return out


def _run(patch, collection: dict, max_steps: int, timeout_s, log, stats):
    from .stage import _python_of, launch, run_timeout

    timeout_s = run_timeout(collection, timeout_s)
    python = _python_of(collection)
    with tempfile.TemporaryDirectory(prefix="npu_advise_whole_run_") as tmp:
        results = Path(tmp) / "results.json"
        spec = Path(tmp) / "spec.json"
        spec.write_text(json.dumps({"results": str(results), "max_steps": max_steps, "patch": patch}), encoding="utf-8")
        cmd = [python, "-m", CHILD_MODULE, str(spec), "--", str(collection["script"]),
               *[str(a) for a in collection.get("args") or []]]
        started = time.perf_counter()
        try:
            code, killed = launch(cmd, collection.get("cwd") or None, python, log, timeout_s)
        except OSError as exc:
            return {}, f"could not start {python}: {exc}"
        stats.runs += 1
        stats.wall_seconds += time.perf_counter() - started
        try:
            doc = json.loads(results.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            doc = {}
    if killed:
        return doc, f"stopped at the time limit of {timeout_s:g} s"
    return doc, doc.get("outcome") or f"ended with status {code} before it started"


# ----------------------------------------------------------------------------------------------
# Child side
# ----------------------------------------------------------------------------------------------
class _Stop(SystemExit):
    def __init__(self):
        super().__init__(0)


def main(argv=None) -> int:
    from npu_advise.collect.bootstrap import _exit_code, _last_error_line, enter_script

    spec, script, _ = enter_script(argv)
    results = Path(spec["results"])
    doc = {"steps": [], "driving": None, "lines": [], "outcome": None}
    patch = spec.get("patch")
    patched_file = os.path.realpath(patch["file"]) if patch else None
    lines = set()

    def save():
        doc["lines"] = sorted(lines)
        tmp = results.with_name(results.name + ".tmp")
        tmp.write_text(json.dumps(doc), encoding="utf-8")
        os.replace(tmp, results)

    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook

    def line_tracer(frame, event, arg):
        if event == "line":
            lines.add(frame.f_lineno)
        return line_tracer

    def call_tracer(frame, event, arg):
        return line_tracer if os.path.realpath(frame.f_code.co_filename) == patched_file else None

    def on_step(optimizer, args, kwargs):
        with torch.no_grad():
            params = [p for g in optimizer.param_groups for p in g["params"]]
            real = [torch.view_as_real(p) if p.is_complex() else p for p in params]
            sums = torch.stack([t for p in real for t in (p.double().sum(), p.double().abs().sum())]).tolist() \
                if real else []
        doc["steps"].append([sums[i:i + 2] for i in range(0, len(sums), 2)])
        stack = []
        frame = sys._getframe(1)
        while frame is not None:
            # resolved here, in the script's working directory (the parent may run elsewhere)
            stack.append((os.path.realpath(frame.f_code.co_filename),
                          getattr(frame.f_code, "co_qualname", frame.f_code.co_name)))
            if patched_file and len(doc["steps"]) == 1 and os.path.realpath(frame.f_code.co_filename) == patched_file:
                frame.f_trace, frame.f_trace_lines = line_tracer, True
            frame = frame.f_back
        doc["driving"] = stack if doc["driving"] is None else [s for s in doc["driving"] if s in stack]
        if patched_file and len(doc["steps"]) == 1:
            sys.settrace(call_tracer)
        if len(doc["steps"]) >= int(spec["max_steps"]):
            sys.settrace(None)
            save()
            if doc.get("stopping"):
                os._exit(0)                 # the script caught the stop and went on
            doc["stopping"] = True
            raise _Stop()

    register_optimizer_step_post_hook(on_step)
    code = 0
    try:
        _run_script(script, patch)
        doc["outcome"] = "completed"
    except _Stop:
        doc["outcome"] = "stopped"
    except SystemExit as exc:
        code = _exit_code(exc)
        doc["outcome"] = f"the script exited with status {code} (sys.exit)" if code else "completed"
    except BaseException as exc:
        doc["outcome"], code = f"the script raised {_last_error_line(exc)}", 1
    finally:
        sys.settrace(None)
        save()
    return code


def _run_script(script: str, patch) -> None:
    """As `python SCRIPT`, with the patched file's text in place of the file (the script or a module it imports)."""
    real = os.path.realpath(patch["file"]) if patch else None
    if real is not None and real != os.path.realpath(script):
        sys.meta_path.insert(0, _PatchFinder(real, patch["source"]))
    source = patch["source"] if real == os.path.realpath(script) else \
        importlib.util.decode_source(Path(script).read_bytes())
    module = types.ModuleType("__main__")
    module.__dict__.update(__file__=script, __cached__=None, __loader__=None, __package__=None, __spec__=None,
                           __builtins__=builtins)
    saved = sys.modules.get("__main__")
    sys.modules["__main__"] = module
    try:
        exec(compile(source, script, "exec", dont_inherit=True), module.__dict__)
    finally:
        sys.modules["__main__"] = saved


class _PatchFinder:
    def __init__(self, real: str, source: str):
        self.real, self.source = real, source

    def find_spec(self, fullname, path=None, target=None):
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is None or not spec.origin or os.path.realpath(spec.origin) != self.real:
            return None
        spec.loader = _PatchLoader(fullname, spec.origin, self.source)
        return spec

    def invalidate_caches(self):
        pass


class _PatchLoader(importlib.machinery.SourceFileLoader):
    def __init__(self, fullname, path, source):
        super().__init__(fullname, path)
        self.source = source

    def get_code(self, fullname):
        # never from or into the bytecode cache: the patched code must not outlive this run
        return compile(self.source, self.path, "exec", dont_inherit=True)


if __name__ == "__main__":
    sys.exit(main())
