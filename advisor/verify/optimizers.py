"""Inside the verification run: a fused-optimizer rewrite (NPA601) checked step by step against its reference.

The rewrite changes one constructor call (`torch.optim.AdamW(params, lr=...)` ->
`torch_npu.optim.NpuFusedAdamW(params, lr=...)`) inside a function that is usually the whole training, so
it cannot run beside the original like other rewrites. Instead, when the original optimizer is constructed
at the rewritten call, the rewritten call expression is evaluated in the same frame with the fused class
served by its reference (references.fused_optimizer: the torch optimizer of the same update rule, with the
fused class's documented signature and defaults from the catalog). At each of the script's optimizer
steps the parameters are put back to where they were before the original's step, the reference steps
from there with the same gradients and its own state, its parameters are compared with the original's,
and the original's are restored: the script continues with its own optimizer's update.
"""
from __future__ import annotations

import sys

import torch

from . import compare as C


class OptimizerTarget:
    def __init__(self, spec: dict, session):
        self.spec, self.session = spec, session
        self.id = spec["id"]
        self.file, self.lines = spec["file"], tuple(spec["call_lines"])
        self.calls = 0
        self.seen = 0
        self.status = "not_called"
        self.reason = None
        self.max_abs = {}
        self.reference = None
        self.original = None
        self._before = None
        self._lr0 = None

    @property
    def done(self) -> bool:
        from .session import STEPS_PER_CANDIDATE
        return (self.status in ("rejected", "not_verifiable") or self.calls >= self.session.max_calls
                or self.calls >= STEPS_PER_CANDIDATE)

    def reject(self, why: str) -> None:
        self.status, self.reason = "rejected", why

    def unverifiable(self, why: str) -> None:
        if self.status != "rejected":
            self.status, self.reason = "not_verifiable", why

    def record(self) -> dict:
        status = {"running": "verified"}.get(self.status, self.status)
        out = {"id": self.id, "status": status, "reason": self.reason, "calls": self.calls, "unit": "optimizer steps"}
        if self.max_abs:
            out["max_abs_diff"] = self.max_abs
        return out

    # -- construction -------------------------------------------------------------------------
    def constructed(self, optimizer, frame) -> None:
        """The original optimizer was built at the rewritten call: build the reference the same way."""
        from .references import shims
        from .swap import Overlay

        scope = Overlay(frame.f_globals, shims(self.spec["npu_calls"]))
        scope.update(frame.f_locals)
        try:
            self.reference = eval(compile(self.spec["new_call"], "<npu-advise rewritten call>", "eval"), {}, scope)
        except Exception as exc:
            return self.reject(f"the rewritten call raised {type(exc).__name__}: {exc} when evaluated where the "
                               f"original optimizer was built")
        self.original = optimizer
        if [len(g["params"]) for g in self.reference.param_groups] != [len(g["params"]) for g in optimizer.param_groups]:
            return self.reject("the rewritten call builds different parameter groups")
        self._lr0 = [(g.get("lr"), r.get("lr")) for g, r in zip(optimizer.param_groups, self.reference.param_groups)]
        self._hp0 = [{k: v for k, v in g.items() if k not in ("params", "lr")} for g in optimizer.param_groups]
        optimizer.register_step_pre_hook(self._pre)
        optimizer.register_step_post_hook(self._post)

    def _params(self, optimizer) -> list:
        return [p for g in optimizer.param_groups for p in g["params"]]

    def _pre(self, optimizer, args, kwargs):
        self.seen += 1
        self._before = None if self.done else [p.detach().clone() for p in self._params(optimizer)]

    def _post(self, optimizer, args, kwargs):
        if self._before is None or self.done:
            return
        params = self._params(optimizer)
        after = [p.detach().clone() for p in params]
        with torch.no_grad():
            for p, v in zip(params, self._before):
                p.data.copy_(v)
            # An LR scheduler moved the original's learning rate: move the reference's alike; and what else it
            # moves (OneCycleLR cycles Adam's betas / SGD's momentum) as the original's.
            for g, r, (o0, r0), h0 in zip(optimizer.param_groups, self.reference.param_groups, self._lr0, self._hp0):
                if o0 and r0 is not None and g.get("lr") != o0:
                    r["lr"] = g["lr"] * r0 / o0
                for k, v0 in h0.items():
                    if k in r and _moved(g.get(k), v0):
                        r[k] = g[k]
            try:
                self.reference.step()
            except Exception as exc:
                self.reject(f"the reference optimizer's step raised {type(exc).__name__}: {exc} on step {self.calls + 1}")
            ref = [p.detach().clone() for p in params]
            for p, v in zip(params, after):
                p.data.copy_(v)
        if self.status == "rejected":
            return
        self.calls += 1
        cmp = C.compare(after, ref, "parameter")
        if not cmp.equal:
            return self.reject(f"step {self.calls}: {cmp.why}")
        self.status = "running"
        for k, v in cmp.max_abs.items():
            self.max_abs[k] = max(self.max_abs.get(k, 0.0), v)


def install(targets: list) -> None:
    """Watch optimizer construction for the targets' calls (file, line range)."""
    if not targets:
        return
    original_init = torch.optim.Optimizer.__init__
    building = [False]

    def init(self, *args, **kwargs):
        original_init(self, *args, **kwargs)
        if building[0]:
            return
        frame = sys._getframe(1)
        while frame is not None and frame.f_code.co_filename.startswith(torch.__path__[0]):
            frame = frame.f_back          # from Optimizer.__init__ up through AdamW.__init__ to the caller
        if frame is None:
            return
        for t in targets:
            if t.original is None and t.status == "not_called" and _same_file(frame.f_code.co_filename, t.file) \
                    and t.lines[0] <= frame.f_lineno <= t.lines[1]:
                building[0] = True
                try:
                    t.constructed(self, frame)
                finally:
                    building[0] = False
                t.session.save()

    torch.optim.Optimizer.__init__ = init


def _moved(now, before) -> bool:
    try:
        return bool(now != before)
    except (RuntimeError, TypeError, ValueError):      # tensors of several elements
        return not torch.equal(torch.as_tensor(now), torch.as_tensor(before))


def _same_file(a: str, b: str) -> bool:
    import os
    return os.path.realpath(a) == os.path.realpath(b)
