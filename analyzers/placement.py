"""Where the trace's tensors would live on the NPU, for analyzers that predict from a CPU or GPU run.

The collector records, per torch call made from user code, whether it touched device tensors, whether
a sync-prone call read a device tensor, and which torch component (optimizer, grad scaler, ...) made
it (`model.CALL_COLUMNS`). These helpers spread that onto host ops and word the provenance that every
predicted finding states.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

NOT_RECORDED = ("Placement was not recorded (a trace without npu-advise's placement tracking): predicted syncs "
                "and loops are judged by operator names alone, so host-only tensors (step counters, data "
                "preparation, numpy-born tensors) can be reported as if they were on the NPU.")


def recorded(trace) -> bool:
    return trace.placement_recorded


def per_op(trace, column: str, missing):
    """The `calls` column of the call that issued each host op (`missing` where none did)."""
    calls = trace.calls
    call = trace.ops["call"].to_numpy() if "call" in trace.ops else np.full(len(trace.ops), -1)
    values = calls[column].to_numpy()
    out = np.full(len(call), missing, dtype=values.dtype if values.dtype != object else object)
    ok = call >= 0
    out[ok] = values[call[ok]]
    return out


def by_component(trace) -> np.ndarray:
    """Per host op: a torch component (optimizer, grad scaler, clip_grad, data loader) made its call."""
    return ~pd.isna(per_op(trace, "component", None))


def note_if_not_recorded(trace) -> None:
    """On a prediction-only trace without placement, say so once in the trace's limitations."""
    if not trace.has_device_timeline and not recorded(trace) and NOT_RECORDED not in trace.limitations:
        trace.limitations.append(NOT_RECORDED)


def how_placed(trace) -> str:
    if not trace.placement_inferred:
        return "measured: the tensors' real device on this run"
    return "inferred by npu-advise's placement tracking while recording (a CPU run: nothing is on a device yet)"


def provenance(trace, roots) -> str:
    """Why the tensors were taken to be device tensors: the distinct roots, most frequent first."""
    roots = [int(r) for r in roots if int(r) >= 0]
    if not roots or not trace.placement_inferred:
        return how_placed(trace)
    uniq, counts = np.unique(np.asarray(roots), return_counts=True)
    texts = [trace.placement_root(int(r)) or f"root #{int(r)}" for r in uniq[np.argsort(-counts, kind="stable")]]
    shown = "; ".join(texts[:3]) + (f"; and {len(texts) - 3} more" if len(texts) > 3 else "")
    return f"{how_placed(trace)}; the tensors derive from: {shown}"
