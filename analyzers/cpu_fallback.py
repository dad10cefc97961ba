"""CPU fallbacks: aten ops that torch_npu has no NPU kernel for, tied to the source line that calls them.

torch_npu runs such ops on the host: inputs are copied device->host, the stream is synchronized, the
op runs on the CPU and the result is copied back. On an NPU trace that is observed (the op's host
range holds the copies and the sync; no AI_CORE kernel runs under it); on a CPU or GPU trace it is
predicted from the op name alone.

Which ops lack a kernel is reference knowledge shipped with the tool
(`aten_ops_without_npu_kernel.txt`, torch_npu 2.14.0's kernel registry diffed against torch's op
list). One Python call shows up as a chain of nested aten ops (`aten::logdet` > `aten::linalg_slogdet`
> `aten::_linalg_slogdet` > `aten::linalg_lu_factor_ex` on a CPU trace); the top-most listed op of a
chain is one occurrence, and the outermost aten op of the chain names the public API the user called.
Fallback ops run by autograd (e.g. `linalg_lu_solve` in `LinalgSlogdetBackward0`) are attributed to
the forward call with the same autograd sequence number.

Also NPA410: kernels the NPU ran on its AI_CPU cores (device-side, slow scalar cores).
"""
from __future__ import annotations

from functools import lru_cache
from importlib import resources

import numpy as np
import pandas as pd

from npu_advise import model
from npu_advise.findings import Evidence, Finding, severity_for_share
from npu_advise.rules import Rule

from . import Analysis
from .common import location, step_stats, us

# Listed ops that a CPU/GPU trace shows in place of an op torch_npu implements under another name
# (backend-specific kernels and their helpers); they say nothing about what the NPU will run.
BACKEND_SPECIFIC_PREFIXES = ("_cudnn", "cudnn_", "miopen", "mkldnn", "_mkldnn", "to_mkldnn", "_cslt",
                             "_flash_attention", "_efficient_attention", "_scaled_dot_product_",
                             "_triton", "_fused_", "_sparse_semi_structured", "_nested", "_test_",
                             "_foobar", "_use_cudnn", "_use_miopen", "_batch_norm_with_update",
                             "batch_norm_", "_weight_int", "_convert_weight", "_dyn_quant", "_int_mm",
                             "_philox", "_make_dep_token", "_transformer_encoder_layer_fwd",
                             "_thnn_fused", "_efficientzerotensor", "_mixed_dtypes_linear")
# Ops that torch_npu implements with its own kernel although on CPU they decompose into listed ops
# (REFERENCE §6: `inverse` is supported, while CPU runs it as linalg_inv_ex + LU ops). A listed op
# nested under one of these is not a fallback.
NPU_IMPLEMENTED_PARENTS = frozenset({"inverse", "_linalg_svd", "linalg_svd", "svd", "linalg_svdvals",
                                     "linalg_qr", "linalg_vector_norm", "linalg_cross",
                                     "linalg_solve_triangular", "matmul", "bmm", "mm"})
# Share of the mean step at which a predicted fallback is rated high (msprof-analyze's cut-off).
HIGH_SHARE_OF_STEP = 0.05
# NPA410: AI_CPU kernels are reported when they take at least this much device time per step (µs).
AICPU_MIN_US_PER_STEP = 20.0

RULE = Rule(
    code="NPA401", name="cpu-fallback-op", category="cpu_fallback",
    detects="Calls of aten ops that have no NPU kernel in torch_npu (torch.logdet / slogdet, det, "
            "linalg.inv, solve, eigh, cholesky, hypot, ...), grouped by the source line that calls them, "
            "with calls and host time per step. Observed on NPU traces, predicted on CPU/GPU traces.",
    why="torch_npu silently runs such ops on the host CPU: it copies the inputs device->host, "
        "synchronizes the stream (the device pipeline drains), computes on the CPU and copies the result "
        "back. Each call costs a sync plus two copies plus slow host math, every step.",
    fix="Rewrite the call with ops that have NPU kernels, e.g. logdet of a covariance (SPD) matrix as "
        "torch.linalg.svdvals(x).log().sum(-1), torch.linalg.inv(x) as torch.inverse(x), torch.hypot as "
        "mx_driving.hypot. Set TORCH_NPU_FALLBACK_CPU_DISABLE=1 once to turn every fallback into an error.",
    thresholds={"HIGH_SHARE_OF_STEP": HIGH_SHARE_OF_STEP},
)
AICPU_RULE = Rule(
    code="NPA410", name="aicpu-kernel", category="cpu_fallback",
    detects="Device kernels the NPU ran on its AI_CPU cores, by kernel name and source line, with count "
            "and device time per step.",
    why="AI_CPU kernels run on the NPU's few general-purpose cores, typically an order of magnitude "
        "slower than AI_CORE kernels, and often force format conversions around them. Common causes: "
        "int64/float64 inputs, unsupported shapes, or ops without an AI_CORE implementation.",
    fix="Cast inputs to the dtypes the AI_CORE kernel accepts (float64 -> float32, int64 -> int32 where "
        "safe), or replace the op with a supported composition or an mx_driving fused op.",
    thresholds={"AICPU_MIN_US_PER_STEP": AICPU_MIN_US_PER_STEP},
)


# What the user called, by the outermost aten op of a call chain, and what to call instead on an NPU.
# `replacement` is a key into the recommender's catalog (npu_advise.recommendations).
PUBLIC_API = {
    "logdet": "torch.logdet", "linalg_slogdet": "torch.linalg.slogdet", "slogdet": "torch.slogdet",
    "det": "torch.det", "linalg_det": "torch.linalg.det", "_linalg_det": "torch.linalg.det",
    "linalg_inv": "torch.linalg.inv", "linalg_inv_ex": "torch.linalg.inv_ex",
    "linalg_solve": "torch.linalg.solve", "linalg_solve_ex": "torch.linalg.solve_ex",
    "_linalg_solve_ex": "torch.linalg.solve",
    "linalg_eigh": "torch.linalg.eigh", "_linalg_eigh": "torch.linalg.eigh", "linalg_eigvalsh": "torch.linalg.eigvalsh",
    "linalg_cholesky": "torch.linalg.cholesky", "cholesky": "torch.cholesky",
    "linalg_cholesky_ex": "torch.linalg.cholesky_ex", "linalg_eig": "torch.linalg.eig",
    "linalg_eigvals": "torch.linalg.eigvals", "linalg_lstsq": "torch.linalg.lstsq", "linalg_lu": "torch.linalg.lu",
    "linalg_lu_factor": "torch.linalg.lu_factor", "linalg_lu_solve": "torch.linalg.lu_solve",
    "hypot": "torch.hypot", "lgamma": "torch.lgamma", "digamma": "torch.digamma", "fmax": "torch.fmax",
    "fmin": "torch.fmin", "mode": "torch.mode", "histogram": "torch.histogram", "heaviside": "torch.heaviside",
    "copysign": "torch.copysign", "polygamma": "torch.polygamma", "i0": "torch.i0", "frexp": "torch.frexp",
}
REPLACEMENTS = {  # public API -> (catalog key, NPU-supported composition)
    "torch.logdet": ("logdet_svdvals", "torch.linalg.svdvals(x).log().sum(-1)  (equals logdet for "
                     "symmetric positive-definite x, e.g. covariance matrices)"),
    "torch.linalg.slogdet": ("slogdet_svdvals", "logabsdet = torch.linalg.svdvals(x).log().sum(-1) (exact for "
                             "any x); sign = 1 for positive-definite x"),
    "torch.slogdet": ("slogdet_svdvals", "logabsdet = torch.linalg.svdvals(x).log().sum(-1) (exact for any x); "
                      "sign = 1 for positive-definite x"),
    "torch.det": ("det_svdvals", "torch.linalg.svdvals(x).prod(-1) for positive-definite x; for 2x2: "
                  "x[..., 0, 0] * x[..., 1, 1] - x[..., 0, 1] * x[..., 1, 0]"),
    "torch.linalg.det": ("det_svdvals", "torch.linalg.svdvals(x).prod(-1) for positive-definite x; for 2x2: "
                         "x[..., 0, 0] * x[..., 1, 1] - x[..., 0, 1] * x[..., 1, 0]"),
    "torch.linalg.inv": ("inv_inverse", "torch.inverse(x) (has an NPU kernel)"),
    "torch.linalg.inv_ex": ("inv_inverse", "torch.inverse(x) (has an NPU kernel)"),
    "torch.linalg.solve": ("solve_inverse", "torch.inverse(A) @ B (both have NPU kernels)"),
    "torch.linalg.solve_ex": ("solve_inverse", "torch.inverse(A) @ B (both have NPU kernels)"),
    "torch.hypot": ("hypot_mx_driving", "mx_driving.hypot(x, y), or torch.sqrt(x * x + y * y)"),
    "torch.fmax": ("fmax_where", "torch.where(torch.isnan(a), b, torch.maximum(a, b))"),
    "torch.fmin": ("fmin_where", "torch.where(torch.isnan(a), b, torch.minimum(a, b))"),
}
NO_COMPOSITION = ("no NPU-supported composition is known: keep it out of the training step (precompute it "
                  "in the data pipeline) or accept the host round trip")
_BACKWARD_PREFIX = "autograd::engine::evaluate_function: "


@lru_cache(maxsize=1)
def ops_without_npu_kernel() -> frozenset:
    """The shipped list of aten op names (no `aten::` prefix) torch_npu has no NPU kernel for."""
    text = resources.files(__package__).joinpath("aten_ops_without_npu_kernel.txt").read_text(encoding="utf-8")
    return frozenset(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


def bare_name(name: str) -> str:
    """`aten::_linalg_slogdet.sign` -> `_linalg_slogdet`; non-aten names -> ''."""
    if not name.startswith("aten::"):
        return ""
    return name[len("aten::"):].split(".", 1)[0]


def is_fallback_op(bare: str) -> bool:
    return bool(bare) and bare in ops_without_npu_kernel() and not bare.startswith(BACKEND_SPECIFIC_PREFIXES)


def public_api(bare: str) -> str:
    if bare in PUBLIC_API:
        return PUBLIC_API[bare]
    return f"torch.{bare.replace('linalg_', 'linalg.', 1)}" if not bare.startswith("_") else f"aten::{bare}"


def analyze(trace, ctx) -> Analysis:
    findings = []
    findings += _fallback_findings(trace, ctx)
    findings += _aicpu_findings(trace, ctx)
    return Analysis(findings=findings)


def _fallback_findings(trace, ctx) -> list:
    ops = trace.ops
    if not len(ops):
        return []
    names = ops["name"]
    cats = [str(c) for c in names.cat.categories]
    listed_codes = [i for i, c in enumerate(cats) if is_fallback_op(bare_name(c))]
    if not listed_codes:
        return []
    stats = step_stats(trace)
    codes = names.cat.codes.to_numpy()
    ts = ops["ts"].to_numpy()
    end = ts + ops["dur"].to_numpy()
    tid = ops["tid"].to_numpy()
    matched = np.flatnonzero(np.isin(codes, listed_codes))
    if stats.from_ranges:
        matched = matched[ops["step"].to_numpy()[matched] >= 0]
    if not len(matched):
        return []
    # One call = the top-most listed op of its chain: drop listed ops nested in another listed op.
    depth, _ = model.nesting(ts[matched], end[matched], tid[matched])
    top = matched[depth == 0]
    _, parent = model.op_tree(ops)      # the loader's tree, computed once per trace
    seq = ops["seq"].to_numpy()
    loc = ops["loc"].to_numpy()
    forward_by_seq = _forward_ops_by_seq(cats, codes, seq, ts)

    calls = []   # (report loc, phase, backward node, fallback op, public api, row)
    for row in top:
        chain = _aten_chain(row, parent, cats, codes)
        if any(bare_name(cats[codes[r]]) in NPU_IMPLEMENTED_PARENTS for r in chain):
            continue
        phase, node, where, api_row = "forward", "", int(loc[row]), chain[-1]
        grad = _enclosing_backward(row, parent, cats, codes)
        if grad >= 0:
            phase, node = "backward", cats[codes[grad]][len(_BACKWARD_PREFIX):]
            fwd = forward_by_seq.get(int(seq[grad]), -1)
            if fwd >= 0:
                api_row = _aten_chain(fwd, parent, cats, codes)[-1]
                where = int(loc[fwd]) if loc[fwd] >= 0 else where
                if any(bare_name(cats[codes[r]]) in NPU_IMPLEMENTED_PARENTS for r in _aten_chain(fwd, parent, cats, codes)):
                    continue
        calls.append((where, phase, node, bare_name(cats[codes[row]]), public_api(bare_name(cats[codes[api_row]])), row))
    if not calls:
        return []
    table = pd.DataFrame(calls, columns=["loc", "phase", "node", "op", "api", "row"])
    findings = []
    for where, group in table.groupby("loc", sort=False):
        findings.append(_fallback_finding(trace, ctx, stats, int(where), group))
    return findings


def _forward_ops_by_seq(cats, codes, seq, ts) -> dict:
    """Autograd sequence number -> the forward op that created the autograd node with that number.

    An op is stamped with the counter's current value; the counter advances when a differentiable op
    records its node, so earlier non-differentiable ops (e.g. `_linalg_check_errors`) can carry the
    same number: the last aten op carrying it is the one that recorded the node.
    """
    rows = np.flatnonzero(seq >= 0)
    rows = rows[np.argsort(ts[rows], kind="stable")]
    out = {}
    for r in rows:
        if cats[codes[r]].startswith("aten::"):
            out[int(seq[r])] = int(r)
    return out


def _aten_chain(row: int, parent: np.ndarray, cats, codes) -> list:
    """The op and its enclosing aten ops, innermost first, up to the first non-aten ancestor."""
    chain = [int(row)]
    p = parent[row]
    while p >= 0 and cats[codes[p]].startswith("aten::"):
        chain.append(int(p))
        p = parent[p]
    return chain


def _enclosing_backward(row: int, parent: np.ndarray, cats, codes) -> int:
    p = parent[row]
    while p >= 0:
        if cats[codes[p]].startswith(_BACKWARD_PREFIX):
            return int(p)
        p = parent[p]
    return -1


def _device_evidence(trace, rows: np.ndarray) -> tuple:
    """(evidence, observed) for fallback ops on an NPU trace: what ran on the device under them."""
    k = trace.kernels
    if not len(k) or trace.device_type != "npu":
        return [], False
    under = k[k["op"].isin(set(int(r) for r in rows))]
    core = under["core"].astype(str)
    kind = under["kind"].astype(str)
    ai_core = int((core.str.startswith(("AI_CORE", "AI_VECTOR", "MIX")) & (kind == "kernel")).sum())
    ev = [Evidence("device kernels launched by these calls", int(len(under)), "kernels",
                   "kernels whose launch is inside the fallback op's host range, all steps"),
          Evidence("of which AI_CPU kernels", int((core == "AI_CPU").sum()), "kernels", "kernel core == AI_CPU"),
          Evidence("of which copies", int((kind == "memcpy").sum()), "kernels", "kernel kind == memcpy")]
    return ev, ai_core == 0


def _fallback_finding(trace, ctx, stats, where: int, group: pd.DataFrame) -> Finding:
    ops = trace.ops
    rows = group["row"].to_numpy()
    n = stats.count
    fwd = group[group["phase"] == "forward"]
    main = fwd.iloc[0] if len(fwd) else group.iloc[0]
    api = main["api"]
    catalog_key, composition = REPLACEMENTS.get(api, (None, NO_COMPOSITION))
    host_ns = float(ops["dur"].to_numpy()[rows].sum())
    per_op = []
    for (op, phase, node), g in group.groupby(["op", "phase", "node"], sort=False):
        r = g["row"].to_numpy()
        per_op.append({"op": f"aten::{op}", "phase": phase, "autograd_node": node or None,
                       "calls_per_step": round(len(r) / n, 3),
                       "host_us_per_step": us(ops["dur"].to_numpy()[r].sum() / n)})
    shapes = [s for s in pd.Series(ops["input_dims"].to_numpy()[fwd["row"].to_numpy()] if len(fwd) else [], dtype=object)
              .dropna().astype(str).value_counts().index[:3]]
    loc = location(trace, where, ctx.project_root)
    how_steps = f"over {n} profiled step(s)" if stats.from_ranges else "whole trace counted as one step"
    evidence = [
        Evidence("calls per step", round((len(fwd) if len(fwd) else len(rows)) / n, 3), "calls",
                 "forward calls: the top-most listed aten op of each call chain (nested listed ops not counted "
                 f"again), {how_steps}"),
        Evidence("host time per step", us(host_ns / n), "us",
                 "sum of the inclusive host durations of those ops and of the listed ops autograd runs for them "
                 "in backward (details.ops) / steps"),
    ]
    if shapes:
        evidence.append(Evidence("input shapes", "; ".join(shapes), "", "Input Dims of the forward op (most frequent first)"))
    dev_ev, observed = _device_evidence(trace, rows)
    evidence += dev_ev
    share = host_ns / n / stats.mean_ns if stats.mean_ns else 0.0
    op_list = ", ".join(sorted({f"aten::{o}" for o in group["op"]}))
    where_txt = f"{loc.file}:{loc.line}" if loc else "an unknown source line (the trace has no source locations)"
    if trace.device_type == "npu":
        predicted = not observed
        saving = us(host_ns / n) if observed else None
        note = ("Measured on the NPU: the host time includes the device->host copies and the stream sync torch_npu "
                "performs around the CPU computation." if observed else
                "The NPU trace shows AI_CORE kernels under these calls, so they may not fall back here; "
                "no saving is estimated.")
    else:
        predicted, saving = True, None
        note = (f"Predicted from a {trace.device_type.upper()} trace: on an NPU these ops have no kernel and run on the "
                "host with device->host->device copies and a stream sync around them. This trace cannot measure that "
                "cost (the op ran natively here), so no saving is estimated.")
    severity = ("high" if share >= HIGH_SHARE_OF_STEP else "medium") if predicted else severity_for_share(share)
    details = {"op": f"aten::{main['op']}", "public_api": api, "replacement": catalog_key,
               "composition": composition, "ops": per_op, "note": note}
    return Finding(
        rule=RULE.code, category="cpu_fallback",
        title=f"{api} at {where_txt} {'would fall back' if predicted else 'falls back'} to the CPU on the NPU "
              f"({op_list} {'has' if len(set(group['op'])) == 1 else 'have'} no NPU kernel); use {composition.split('  (')[0] if catalog_key else 'an NPU-supported op'}",
        severity=severity, evidence=evidence, locations=[loc] if loc else [],
        estimated_saving_us=saving, details=details, predicted=predicted)


def _aicpu_findings(trace, ctx) -> list:
    k = trace.kernels
    if not len(k) or trace.device_type != "npu":
        return []
    aicpu = k[k["core"].astype(str) == "AI_CPU"]
    stats = step_stats(trace)
    if stats.from_ranges:
        aicpu = aicpu[aicpu["step"] >= 0]
    if not len(aicpu):
        return []
    findings = []
    n = stats.count
    grouped = aicpu.groupby([aicpu["name"].astype(str), aicpu["loc"]], sort=False)["dur"].agg(["count", "sum"])
    for (name, where), row in grouped.iterrows():
        per_step_us = us(row["sum"] / n)
        if per_step_us < AICPU_MIN_US_PER_STEP:
            continue
        loc = location(trace, int(where), ctx.project_root)
        share = row["sum"] / n / stats.mean_ns if stats.mean_ns else 0.0
        findings.append(Finding(
            rule=AICPU_RULE.code, category="cpu_fallback",
            title=f"{name} runs on the NPU's AI_CPU cores"
                  + (f" ({loc.file}:{loc.line})" if loc else ""),
            severity=severity_for_share(share),
            evidence=[Evidence("kernels per step", round(int(row["count"]) / n, 3), "kernels", "AI_CPU kernels / steps"),
                      Evidence("device time per step", per_step_us, "us", "sum of their durations / steps")],
            locations=[loc] if loc else [], estimated_saving_us=None,
            details={"kernel": name, "note": "No saving is estimated: it depends on the AI_CORE alternative."}))
    return findings
