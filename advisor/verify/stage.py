"""Parent side of the verification stage: which candidates can be run, in how many extra runs, and what
each result means for the finding's fix.

A candidate is run when it replaces one function (not module-level code), its file is unchanged since
the analysis, and every NPU-only API its new code calls has a pure-PyTorch reference. All candidates share
one run (several for one function are stacked); identical candidates (the NPA501 and NPA302 findings of one
loop) are run once and share the result; a finding's alternatives wait in the same run for the candidates
before them to fail. The run is the profiled script again (same argv, cwd, interpreter), in a child process
with a time limit, for at most the profile's wait + warmup + active optimizer steps, and ends as soon as
every candidate has its calls.
"""
from __future__ import annotations

import hashlib
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from npu_advise import progress
from npu_advise.apply.safety import sha256_text
from npu_advise.recommendations.candidates import MODULE_LEVEL

from . import summary
from .references import REFERENCES

CHILD_MODULE = "npu_advise.verify.child"
MAX_CALLS = 24                 # compared calls per candidate
CALL_TIMEOUT_S = 30.0          # one call of a rewrite
MIN_RUN_TIMEOUT_S = 120.0      # the whole run: at least this, else 3x the profiled run's wall time


@dataclass
class RunStats:
    runs: int = 0
    wall_seconds: float = 0.0
    steps: int = 0
    outcomes: list = field(default_factory=list)


def verify_report(report, candidates: dict, collection: dict, max_calls: int = MAX_CALLS,
                  timeout_s: Optional[float] = None, log: Optional[Path] = None, echo=None) -> RunStats:
    """Verify the report's candidates on a re-run of the profiled script; sets `fix.verification` on every
    finding with a candidate. A finding's candidate and its alternatives form a chain: an alternative is
    compared once every candidate before it failed (in the same run, from the next call on; in one more run
    when it was not called after that), and the first one verified becomes the finding's fix. The script's
    own output goes to `log` (default: discarded)."""
    stats = RunStats()
    specs = {}                                    # target id -> spec
    chains = []                                   # (finding, [(candidate, target id or None, result)])
    for f in report.findings:
        c = candidates.get(f.id)
        if c is None or f.fix is None or not f.fix.diff:
            continue
        chain, before = [], []
        for cand in [c] + list(c.alternatives):
            why = _not_runnable(cand, collection)
            if why is not None:
                chain.append([cand, None, {"status": "not_verifiable", "reason": why,
                                           "on_this_machine": bool(cand.requires)}])
                continue
            tid = _target_id(cand)
            if tid not in specs:                  # the NPA501 and NPA302 findings of one loop share it
                specs[tid] = dict(_spec(cand, tid), after=list(before))
            chain.append([cand, tid, None])
            before.append(tid)
        chains.append((f, chain))
    results = {}
    todo = list(specs.values())
    for _ in range(2):                            # the run, and one for alternatives it had no call for
        for round_ in progress.track(_rounds(todo), "verifying rewrites", unit="runs"):
            results.update(_verify_round(round_, collection, max_calls, timeout_s, log, echo, stats))
        todo = [dict(specs[t], after=[]) for t in _unreached(chains, specs, results)]
        if not todo:
            break
    for f, chain in chains:
        for link in chain:
            if link[1] is not None:
                link[2] = results[link[1]]
        _choose(f, chain, candidates)
    from .whole_run import verify_whole_runs
    verify_whole_runs(report, candidates, collection, stats, timeout_s, log, echo)
    return stats


def _spec(c, tid: str) -> dict:
    call = _rewritten_optimizer_call(c)
    if call is not None:
        lines, text = call
        return {"id": tid, "kind": "optimizer", "file": str(c.path), "function": c.function,
                "call_lines": lines, "new_call": text, "npu_calls": list(c.npu_calls)}
    return {"id": tid, "file": str(c.path), "function": c.function, "function_source": c.function_source,
            "npu_calls": list(c.npu_calls)}


def _verify_round(specs: list, collection, max_calls, timeout_s, log, echo, stats: RunStats) -> dict:
    """target id -> final record, from one run of the script."""
    raw, outcome, wall = _run(specs, collection, max_calls, timeout_s, log, echo)
    stats.runs += 1
    stats.wall_seconds += wall
    stats.steps = max(stats.steps, raw.get("steps") or 0)
    stats.outcomes.append(outcome)
    by_id = {r["id"]: r for r in raw.get("targets", [])}
    return {s["id"]: _final(by_id.get(s["id"]), raw, outcome, s) for s in specs}


def _unreached(chains: list, specs: dict, results: dict) -> list:
    """Alternatives whose chain has nothing verified, whose turn came (all before them failed) but that were
    not called after it."""
    out = []
    for _, chain in chains:
        tids = [t for _, t, _ in chain if t is not None]
        if any(results[t]["status"] == "verified" for t in tids):
            continue
        for t in tids:
            after = specs[t]["after"]
            if after and results[t].get("not_called") and not any(
                    results[a]["status"] == "verified" or results[a].get("not_called") for a in after):
                out.append(t)
    return list(dict.fromkeys(out))


def _choose(finding, chain: list, candidates: dict) -> None:
    """The finding's fix: the first candidate of its chain that was verified (else the first one), with what
    happened to the ones before it."""
    pick = next((k for k, (_, _, r) in enumerate(chain) if r["status"] == "verified"), 0)
    cand, _, result = chain[pick]
    result = dict(result)
    if pick:
        result["instead_of"] = [{"rewrite": c.catalog_ref, "status": r["status"], "reason": r.get("reason")}
                                for c, _, r in chain[:pick]]
        finding.fix = cand.to_fix(finding.id)
        if cand.requires:
            finding.details["fix_requires"] = list(cand.requires)
        else:
            finding.details.pop("fix_requires", None)
        if cand.catalog_ref.startswith("rewrites."):
            finding.details["rewrite_generator"] = cand.catalog_ref.split(".", 1)[1]
        candidates[finding.id] = cand
    elif len(chain) > 1:
        result["alternatives_tried"] = sum(1 for _, _, r in chain[1:] if r.get("calls"))
    _set(finding, cand, result)


def _not_runnable(c, collection: dict) -> Optional[str]:
    if collection.get("launcher") == "torchrun":
        return "multi-process (torchrun) runs are not re-run for verification"
    if not collection.get("script"):
        return "the report does not record the script that was profiled (analyze of a foreign trace)"
    if c.function in (None, MODULE_LEVEL):
        what = "module-level code (imports, the entry point's set-up)"
        if c.requires:
            return f"changes {what} and needs {', '.join(c.requires)}, which is not installed here"
        return f"changes {what}, which cannot be run beside the original"
    missing = [n for n in c.npu_calls if n not in REFERENCES]
    if missing:
        return (f"the new code calls {', '.join(missing)} ({', '.join(c.requires)} is not installed here), which "
                f"has no pure-PyTorch reference")
    if c.requires and not c.npu_calls:
        return f"the new code needs {', '.join(c.requires)}, which is not installed here"
    try:
        on_disk = Path(c.path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return f"{c.file} cannot be read"
    if sha256_text(on_disk) != sha256_text(c.old_source):
        return f"{c.file} changed since the analysis"
    return None


def _rewritten_optimizer_call(c) -> Optional[tuple]:
    """((first, last) line in the old file, source) of the one fused-optimizer constructor call a fused-optimizer
    rewrite (NPA601) makes, or None for every other rewrite."""
    if not (c.catalog_ref or "").startswith("optimizers.") or not c.npu_calls:
        return None
    import ast
    import difflib

    from npu_advise.recommendations.candidates import dotted_name

    calls = [n for n in ast.walk(ast.parse(c.new_source))
             if isinstance(n, ast.Call) and dotted_name(n.func) in c.npu_calls]
    if len(calls) != 1:
        return None
    opcodes = difflib.SequenceMatcher(None, c.old_source.split("\n"), c.new_source.split("\n"),
                                      autojunk=False).get_opcodes()

    def old_line(line: int, last: bool) -> int:
        for tag, i1, i2, j1, j2 in opcodes:
            if j1 < line <= j2:
                return i1 + (line - j1) if tag == "equal" else (i2 if last else i1 + 1)
        return line

    call = calls[0]
    return ((old_line(call.lineno, False), old_line(call.end_lineno, True)),
            ast.get_source_segment(c.new_source, call))


def _target_id(c) -> str:
    key = "\0".join([str(c.path), c.function, c.function_source or "", ",".join(c.npu_calls)])
    return "T" + hashlib.sha1(key.encode()).hexdigest()[:10]


def _rounds(specs: list) -> list:
    """Greedy grouping into runs: candidates for one function are stacked in one run (each pairs what the one
    before bound); two rewrites of one optimizer constructor call are not."""
    rounds = []
    for spec in specs:
        key = (spec["file"], spec["function"]) if spec.get("kind") == "optimizer" else None
        for r in rounds:
            if key is None or all((s["file"], s["function"]) != key for s in r if s.get("kind") == "optimizer"):
                r.append(spec)
                break
        else:
            rounds.append([spec])
    return rounds


def _python_of(collection: dict) -> str:
    try:
        return shlex.split(collection.get("command") or "")[0]
    except (ValueError, IndexError):
        return sys.executable


def run_timeout(collection: dict, timeout_s: Optional[float]) -> float:
    """A verification child's time limit: `timeout_s` as given, else MIN_RUN_TIMEOUT_S or 3x the profiled run."""
    if timeout_s is not None:
        return timeout_s
    return max(MIN_RUN_TIMEOUT_S, 3 * float(collection.get("wall_seconds") or 0))


def _run(specs: list, collection: dict, max_calls: int, timeout_s: Optional[float], log, echo):
    schedule = collection.get("schedule") or {}
    max_steps = 0 if collection.get("mode") == "window" else \
        int(schedule.get("wait", 1)) + int(schedule.get("warmup", 1)) + int(schedule.get("active", 3))
    timeout_s = run_timeout(collection, timeout_s)
    python = _python_of(collection)
    with tempfile.TemporaryDirectory(prefix="npu_advise_verify_") as tmp:
        results_path = Path(tmp) / "results.json"
        spec_path = Path(tmp) / "spec.json"
        call_timeout = min(CALL_TIMEOUT_S, timeout_s / 4)
        spec_path.write_text(json.dumps({"results": str(results_path), "max_calls": max_calls, "max_steps": max_steps,
                                         "call_timeout_s": call_timeout, "targets": specs,
                                         "window_seconds": collection.get("window_seconds")}), encoding="utf-8")
        cmd = [python, "-m", CHILD_MODULE, str(spec_path), "--", str(collection["script"]),
               *[str(a) for a in collection.get("args") or []]]
        if echo is not None:
            echo(f"npu-advise: verifying {len(specs)} rewrite{'s' if len(specs) != 1 else ''} on a re-run of "
                 f"{collection['script']} ({f'up to {max_steps} optimizer steps' if max_steps else 'its profiled window'}, "
                 f"{max_calls} calls each, time limit {timeout_s:g} s)")
        started = time.perf_counter()
        try:
            code, killed = launch(cmd, collection.get("cwd") or None, python, log, timeout_s)
        except OSError as exc:
            return {}, f"could not start {python}: {exc}", 0.0
        wall = time.perf_counter() - started
        try:
            results = json.loads(results_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            results = {}
    if killed:
        outcome = f"the verification run was stopped at its time limit of {timeout_s:g} s"
    elif code is not None and code < 0:
        outcome = f"the verification run crashed ({_signal_name(-code)})"
    else:
        outcome = results.get("outcome") or f"the verification run ended with status {code} before it started"
    results["killed"] = killed or (code is not None and code < 0)
    return results, outcome, wall


def _signal_name(num: int) -> str:
    import signal
    try:
        return f"signal {num}, {signal.Signals(num).name}"
    except ValueError:
        return f"signal {num}"


def _kill(proc) -> None:
    import signal
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except OSError:
        pass
    proc.wait()


def launch(cmd: list, cwd, python: str, log, timeout_s: float) -> tuple:
    """Run a verification child in its own session, output to `log` (or nowhere): (exit code, killed).
    Killed at the time limit (code None) or when the user interrupts; OSError when it cannot start."""
    from npu_advise.collect.runner import _child_env

    sink = open(log, "ab") if log is not None else subprocess.DEVNULL
    try:
        proc = subprocess.Popen(cmd, cwd=cwd, env=_child_env(python), stdin=subprocess.DEVNULL, stdout=sink,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return proc.wait(timeout=timeout_s), False
        except subprocess.TimeoutExpired:
            _kill(proc)
            return None, True
        except KeyboardInterrupt:
            _kill(proc)
            raise
    finally:
        if log is not None:
            sink.close()


def _final(result: Optional[dict], results: dict, outcome: str, spec: dict) -> dict:
    """A target's record, with what the run's end means for it (crash or kill during its call)."""
    if result is None:
        return {"status": "not_verifiable", "reason": f"no result: {outcome}"}
    result = {k: v for k, v in result.items() if k != "id"}
    in_progress = results.get("in_progress") or {}
    if in_progress.get("id") == spec["id"] and results.get("killed"):
        result.update(status="rejected", reason=f"call {in_progress.get('call')}: {outcome} while the rewrite ran")
    elif result["status"] == "not_called":
        result.update(status="not_verifiable", not_called=True,
                      reason=f"{spec['function']} was not called in the verification run ({outcome} after "
                             f"{results.get('steps', 0)} optimizer steps)")
    elif result["status"] == "verified" and not result.get("calls"):
        result.update(status="not_verifiable", reason=f"no call was compared ({outcome})")
    elif result["status"] == "verified" and result.get("reference_calls") == 0:
        # the rewrite's new code (an NPU arm behind a device test) never ran: only unchanged code was compared
        result.update(status="not_verifiable", not_exercised=True, on_this_machine=True,
                      reason=f"the rewritten {spec['function']} ran on {result['calls']} call"
                             f"{'s' if result['calls'] != 1 else ''} and never called {', '.join(spec['npu_calls'])} "
                             f"(its pure-PyTorch reference ran 0 times): the branch that calls it is not taken on "
                             f"this machine (an NPU arm behind a device test), so only unchanged code was compared")
    if spec.get("npu_calls"):
        result["reference"] = list(spec["npu_calls"])
    result["run_outcome"] = outcome
    return result


def _set(finding, candidate, result: dict) -> None:
    """Record the result on the finding's fix. Verified on >= 1 call: auto-applicable when the candidate's
    static checks held (what only verification proves now is proven); rejected: never auto-applicable;
    not verifiable: as the static checks left it."""
    result["summary"] = summary.describe(result)
    finding.fix.verification = result
    if result["status"] == "rejected":
        finding.fix.auto_applicable = False
    elif result["status"] == "verified" and result.get("calls") and candidate.applicable_when_verified:
        finding.fix.auto_applicable = True
