"""Inside the verification run: each call of a target function runs the original and the rewrite side by side.

Per call: the arguments are cloned before anything runs; the original runs on the real arguments and
its result is what the script continues with; the random state is put back to where it was before the
original ran and the rewrite runs on the clones; then the random state is set to where the original
left it, so the script draws what it would have drawn. Outputs and the arguments after the call
(in-place writes) are compared. On the first DETAIL_CALLS calls both sides also run once more on fresh
clones under an op counter, and when outputs require grad the same random cotangent is backpropagated
through both (autograd.grad: nothing accumulates into the script's .grad) and the gradients of the
inputs and of the parameters of modules among the arguments are compared.

Every result is written to the results file as soon as it is known, so a crash or a kill leaves what
was found; the call in progress is marked there first, so a hang or a crash inside a rewrite is blamed
on it.
"""
from __future__ import annotations

import json
import os
import signal
import statistics
import threading
import time
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from . import compare as C
from .swap import (PAIRED_ORIGINAL, NotSwappable, build_candidate, compile_candidate, find_def_function,
                   own_function, rewrap, unwrap)

DETAIL_CALLS = 2
# A candidate compared on calls in this many optimizer steps has its evidence (later steps repeat the first
# ones' shapes and code paths), so the run can end before the profile's step count.
STEPS_PER_CANDIDATE = 3
COTANGENT_SEED = 1234


class CandidateTimeout(Exception):
    pass


class StopRun(SystemExit):
    """Ends the verification run (raised from the optimizer hook, or at a target's call after the deadline)."""

    def __init__(self):
        super().__init__(0)


class OpCounter(TorchDispatchMode):
    """Counts the aten ops dispatched inside the block (what the device would be asked to launch)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.count += 1
        return func(*args, **(kwargs or {}))


class Target:
    """One candidate installed beside the function it rewrites."""

    def __init__(self, spec: dict, session: "Session"):
        self.spec, self.session = spec, session
        self.id = spec["id"]
        self.name = spec["function"].rsplit(".", 1)[-1]
        self.code = None
        self.calls = 0                      # calls compared
        self.steps = set()                  # the optimizer steps they were made in
        self.seen = 0                       # calls the script made
        self.reference_calls = 0            # calls of the pure-PyTorch references of its NPU-only APIs
        self.status = "not_called"          # not_called | running | verified | rejected | not_verifiable
        self.reason = None
        self.max_abs = {}
        self.ops = None                     # (original, rewrite) ops per call, from the counted calls
        self.times = []                     # (step, original s, rewrite s)
        self.grads = None                   # "equal" / None (no float output requiring grad)
        self.grad_tensors = 0

    @property
    def failed(self) -> bool:
        return self.status in ("rejected", "not_verifiable")

    @property
    def enough(self) -> bool:
        return self.calls >= self.session.max_calls or len(self.steps) >= STEPS_PER_CANDIDATE

    @property
    def done(self) -> bool:
        """Nothing more to compare: failed, has its calls, or a candidate it stands in for has them."""
        return self.failed or self.enough or any(not p.failed and p.enough for p in self.before)

    @property
    def active(self) -> bool:
        """An alternative is compared only once every candidate before it (spec "after") has failed."""
        return all(p.failed for p in self.before)

    @property
    def before(self) -> list:
        return [self.session.targets[t] for t in self.spec.get("after") or () if t in self.session.targets]

    def record(self) -> dict:
        out = {"id": self.id, "status": self.status if self.status != "running" else "verified",
               "reason": self.reason, "calls": self.calls}
        if self.spec.get("npu_calls"):
            out["reference_calls"] = self.reference_calls
        if self.status == "not_called":
            out["status"] = "not_called"
        if self.max_abs:
            out["max_abs_diff"] = self.max_abs
        if self.ops is not None:
            out["ops_per_call"] = {"original": self.ops[0], "rewrite": self.ops[1]}
        if self.times:
            # Per step: the median call times the calls per step (every call the script made, compared or
            # not, over the optimizer steps completed).
            orig = statistics.median(t for _, t, _ in self.times) * 1e3
            new = statistics.median(t for _, _, t in self.times) * 1e3
            out["host_ms"] = {"original_per_call": round(orig, 4), "rewrite_per_call": round(new, 4)}
            if self.session.step:
                per_step = self.seen / self.session.step
                out["host_ms"].update(calls_per_step=round(per_step, 2), original_per_step=round(orig * per_step, 4),
                                      rewrite_per_step=round(new * per_step, 4))
        out["gradients"] = self.grads
        out["gradient_tensors"] = self.grad_tensors
        return out

    def reject(self, why: str) -> None:
        self.status, self.reason = "rejected", why

    def unverifiable(self, why: str) -> None:
        if self.status not in ("rejected",):
            self.status, self.reason = "not_verifiable", why

    # -- installation -------------------------------------------------------------------------
    def pair(self, obj, decorator=None):
        """What the instrumented module binds instead of the original def (`decorator`: the source of its
        first decorator other than @staticmethod / @classmethod, None when it has none)."""
        cell = None
        try:
            if decorator is not None:
                where, found = find_def_function(obj, self.spec["function"], decorator)
                if where == "cell":
                    cell = found
            kind, called = ("function", cell.cell_contents) if cell is not None else unwrap(obj)
            original = own_function(called)     # `called` may be another candidate's pairing of it
            if self.code is None:
                self.code = compile_candidate(self.spec["function_source"], self.name, original)
            rewrite = build_candidate(self.code, original, self.spec["function_source"], self.session.globals_for(self, original))
        except NotSwappable as exc:
            self.unverifiable(f"cannot be swapped: {exc}")
            self.session.save()
            return obj
        except Exception as exc:    # the rewrite's defaults or decorators fail to evaluate
            self.reject(f"the rewritten function could not be built: {type(exc).__name__}: {exc}")
            self.session.save()
            return obj
        target = self

        def paired(*args, **kwargs):
            session = target.session
            if not session.busy:
                target.seen += 1            # a call of the script's own (not one of a rewrite's runs)
            if session.deadline is not None and not session.busy and time.time() > session.deadline:
                raise StopRun()             # a --window-seconds profile: its window is over
            if target.done or session.busy or not target.active:
                return called(*args, **kwargs)
            return session.run_pair(target, called, rewrite, args, kwargs)

        for attr in ("__name__", "__qualname__", "__doc__", "__module__"):
            try:
                setattr(paired, attr, getattr(original, attr))
            except (AttributeError, TypeError):
                pass
        paired.__dict__.update(original.__dict__)   # a copy: attributes set on paired must not land on the original
        paired.__wrapped__ = called
        setattr(paired, PAIRED_ORIGINAL, original)
        if cell is not None:
            cell.cell_contents = paired         # the decorator's wrapper now calls the pairing
            return obj
        return rewrap(kind, paired)


class Session:
    def __init__(self, specs: list, results_path: Path, max_calls: int, call_timeout_s: float,
                 window_seconds: float = None):
        from .optimizers import OptimizerTarget

        self.targets = {s["id"]: (OptimizerTarget if s.get("kind") == "optimizer" else Target)(s, self) for s in specs}
        self.results_path = Path(results_path)
        self.max_calls = max_calls
        self.call_timeout_s = call_timeout_s
        self.busy = False
        self.step = 0
        self.in_progress = None
        self.run_outcome = None
        self.overhead_s = 0.0        # time spent verifying (everything but the originals' own calls)
        self.deadline = time.time() + window_seconds if window_seconds else None

    def globals_for(self, target: Target, original):
        names = target.spec.get("npu_calls") or []
        if not names:
            return None
        from .references import shims
        from .swap import Overlay

        def called():
            target.reference_calls += 1
        return Overlay(original.__globals__, shims(names, called))

    def all_done(self) -> bool:
        return all(t.done for t in self.targets.values())

    def save(self) -> None:
        doc = {"targets": [t.record() for t in self.targets.values()], "in_progress": self.in_progress,
               "steps": self.step, "outcome": self.run_outcome}
        tmp = self.results_path.with_name(self.results_path.name + ".tmp")
        tmp.write_text(json.dumps(doc, indent=1, default=str), encoding="utf-8")
        os.replace(tmp, self.results_path)

    # -- one call -----------------------------------------------------------------------------
    def run_pair(self, t: Target, original, rewrite, args, kwargs):
        entered, t_orig = time.perf_counter(), 0.0
        self.busy = True
        try:
            n = t.calls + 1
            cand_args = C.clone((args, kwargs))
            detail = n <= DETAIL_CALLS
            spare = [C.clone((args, kwargs)) for _ in range(2)] if detail else None
            modules = C.modules_in(args)
            rng_before, buffers_before = C.RandomState(), C.BufferState(modules)
            # The script's own call: its exceptions are the script's. Targets it calls are verified inside
            # it; the time that costs is not the original's.
            self.busy = False
            nested = self.overhead_s
            started = time.perf_counter()
            result = original(*args, **kwargs)
            t_orig = time.perf_counter() - started - (self.overhead_s - nested)
            self.busy = True
            rng_after, buffers_after = C.RandomState(), C.BufferState(modules)
            try:
                rng_before.restore()
                buffers_before.restore()
                self.in_progress = {"id": t.id, "call": n}
                self.save()
                try:
                    with _contained(self.call_timeout_s):
                        started = time.perf_counter()
                        cand = rewrite(*cand_args[0], **cand_args[1])
                        t_cand = time.perf_counter() - started
                except CandidateTimeout:
                    t.reject(f"did not return within {self.call_timeout_s:g} s on call {n}")
                    return result
                except BaseException as exc:    # SystemExit and KeyboardInterrupt from a rewrite too
                    t.reject(f"raised {_exc_line(exc)} on call {n}")
                    return result
                t.calls = n
                t.steps.add(self.step)
                t.status = "running"
                if n > 1:           # the first call pays one-time set-up (allocator, lazy initialization)
                    t.times.append((self.step, t_orig, t_cand))
                buffers = C.compare(buffers_after.values(), buffers_before.current(), "module buffer")
                if not self._same(t, n, result, cand, args, kwargs, cand_args, buffers):
                    return result
                if detail:
                    self._detail(t, n, original, rewrite, rng_before, buffers_before, spare)
            finally:
                rng_after.restore()
                buffers_after.restore()
                self.in_progress = None
                self.save()
            return result
        finally:
            self.busy = False
            self.overhead_s += time.perf_counter() - entered - t_orig

    def _same(self, t, n, result, cand, args, kwargs, cand_args, buffers) -> bool:
        out = C.compare(result, cand, "output")
        if out.equal:
            inputs = C.compare((args, kwargs), cand_args, "input")
            if not inputs.equal:
                out.fail("", f"{inputs.why} after the call (in-place writes differ)")
            elif not buffers.equal:
                out.fail("", f"{buffers.why} after the call (module state updated differently)")
            else:
                for k, v in list(inputs.max_abs.items()) + list(buffers.max_abs.items()):
                    out.note(k, v)
        if not out.equal:
            t.reject(f"call {n}: {out.why}")
            return False
        for k, v in out.max_abs.items():
            t.max_abs[k] = max(t.max_abs.get(k, 0.0), v)
        return True

    def _detail(self, t, n, original, rewrite, rng_before, buffers_before, spare) -> None:
        """Op counts, and gradients through both sides, on fresh clones."""
        (oa, okw), (ca, ckw) = spare
        counts = []
        outs = []
        for fn, a, kw in ((original, oa, okw), (rewrite, ca, ckw)):
            rng_before.restore()
            buffers_before.restore()
            with OpCounter() as counter:
                try:
                    with _contained(self.call_timeout_s):
                        outs.append(fn(*a, **kw))
                except BaseException as exc:
                    if fn is rewrite:
                        t.reject(f"raised {_exc_line(exc)} on call {n} (second run on fresh clones)")
                    else:
                        t.unverifiable(f"the original raised {_exc_line(exc)} when run again on clones of its arguments")
                    return
            counts.append(counter.count)
        t.ops = tuple(counts) if t.ops is None else tuple(max(x, y) for x, y in zip(t.ops, counts))
        self._gradients(t, n, outs, spare)

    def _gradients(self, t, n, outs, spare) -> None:
        o_out = [x for x in C.tensors_in(outs[0]) if x.requires_grad and (x.is_floating_point() or x.is_complex())]
        c_out = [x for x in C.tensors_in(outs[1]) if x.requires_grad and (x.is_floating_point() or x.is_complex())]
        if not o_out:
            return
        if len(o_out) != len(c_out):
            return t.reject(f"call {n}: {len(o_out)} outputs require grad in the original, {len(c_out)} in the rewrite")
        gen = torch.Generator().manual_seed(COTANGENT_SEED)
        cot = [torch.randn(x.shape, generator=gen, dtype=x.dtype) .to(x.device) for x in o_out]
        params = [p for m in C.modules_in(spare[0][0]) for p in m.parameters() if p.requires_grad]
        o_in = [x for x in C.tensors_in(spare[0]) if x.requires_grad] + params
        c_in = [x for x in C.tensors_in(spare[1]) if x.requires_grad] + params
        if not o_in:
            return
        try:
            g_o = torch.autograd.grad(o_out, o_in, cot, allow_unused=True)
        except RuntimeError as exc:
            return t.unverifiable(f"gradients of the original could not be taken: {exc}".split("\n")[0])
        try:
            g_c = torch.autograd.grad(c_out, c_in, cot, allow_unused=True)
        except RuntimeError as exc:
            return t.reject(f"call {n}: backward through the rewrite failed: {exc}".split("\n")[0])
        g_o = [torch.zeros_like(x) if g is None else g for g, x in zip(g_o, o_in)]
        g_c = [torch.zeros_like(x) if g is None else g for g, x in zip(g_c, c_in)]
        cmp = C.compare(g_o, g_c, "gradient")
        if not cmp.equal:
            return t.reject(f"call {n}: {cmp.why.replace('gradient[', 'gradient of input ', 1).replace(']', '', 1)}")
        t.grads = "equal"
        t.grad_tensors = len(o_in)
        for k, v in cmp.max_abs.items():
            t.max_abs["grad " + k] = max(t.max_abs.get("grad " + k, 0.0), v)


def _exc_line(exc: BaseException) -> str:
    if isinstance(exc, SystemExit):
        return f"SystemExit({exc.code!r}) (sys.exit)"
    text = str(exc).strip().split("\n")[0]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _contained:
    """Around a rewrite's call: Python code running longer than `seconds` is interrupted (main thread
    only; a hang inside one C call is caught by the parent's time limit on the whole run instead), and
    `os._exit` raises SystemExit instead of ending the process."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.armed = threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer")

    def __enter__(self):
        self.os_exit = os._exit
        os._exit = _raise_exit
        if self.armed:
            self.old = signal.signal(signal.SIGALRM, self._fire)
            signal.setitimer(signal.ITIMER_REAL, self.seconds)
        return self

    def _fire(self, signum, frame):
        raise CandidateTimeout()

    def __exit__(self, *exc):
        if self.armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, self.old)
        os._exit = self.os_exit
        return False


def _raise_exit(code):
    raise SystemExit(code)
