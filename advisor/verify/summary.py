"""One sentence per verification result, for the report, the console and SARIF."""
from __future__ import annotations

from .compare import TOLERANCES

_RTOL = {str(k).replace("torch.", ""): v[0] for k, v in TOLERANCES.items()}


def describe(r: dict) -> str:
    status = r.get("status")
    if status == "rejected":
        return f"rejected: {r.get('reason')}"
    if status == "not_verifiable":
        where = " on this machine" if r.get("on_this_machine") else ""
        return f"not verifiable{where}: {r.get('reason')}"
    if status != "verified":
        return f"not verified: {r.get('reason') or status}"
    n = r.get("calls", 0)
    unit = r.get("unit", "calls")
    if r.get("check") == "whole run":
        worst = (r.get("max_abs_diff") or {}).get("parameters", 0.0)
        return (f"verified on a whole run of {n} optimizer step{'s' if n != 1 else ''} with the rewrite applied: the "
                f"parameters after every step equal those of the run without it (max |diff| of a parameter sum {worst:.2g})")
    head = f"verified on {n} {unit if n != 1 else unit.rstrip('s')} in this run"
    if r.get("reference"):
        head += f" against the pure-PyTorch reference of {', '.join(r['reference'])} (the NPU kernel itself is not run here)"
    parts = []
    diffs = {k: v for k, v in (r.get("max_abs_diff") or {}).items() if not k.startswith("grad ")}
    if diffs:
        what = "parameters after each step" if unit == "optimizer steps" else "outputs"
        parts.append(f"{what} max |diff| " + ", ".join(
            f"{v:.2g} ({k}" + (f", rtol {_RTOL[k]:g})" if k in _RTOL else ")") for k, v in diffs.items()))
    else:
        parts.append("outputs equal")
    if r.get("gradients") == "equal":
        g = {k[5:]: v for k, v in (r.get("max_abs_diff") or {}).items() if k.startswith("grad ")}
        parts.append("gradients equal" + (" (max |diff| " + ", ".join(f"{v:.2g}" for v in g.values()) + ")" if g and max(g.values()) > 0 else ""))
    tail = []
    ops = r.get("ops_per_call") if not r.get("reference") else None     # a reference's ops are not the kernel's
    if ops:
        tail.append(f"{ops['original']} -> {ops['rewrite']} ops per call")
    t = r.get("host_ms")
    if t and not r.get("reference"):
        if "original_per_step" in t:
            tail.append(f"host time {_ms(t['original_per_step'])} -> {_ms(t['rewrite_per_step'])} ms per step "
                        f"(median call x {t['calls_per_step']:g} calls per step)")
        else:
            tail.append(f"host time {_ms(t['original_per_call'])} -> {_ms(t['rewrite_per_call'])} ms per call (median)")
    for alt in r.get("instead_of") or ():
        tail.append(f"chosen after {alt['rewrite']} was {alt['status'].replace('_', ' ')} ({alt['reason']})")
    return f"{head}: " + "; ".join([", ".join(parts)] + tail)


def _ms(v: float) -> str:
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"
