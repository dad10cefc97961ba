"""Derive the host dispatch cost of top-level aten ops on Ascend from the real torch_npu traces.

    python benchmarks/derive_dispatch_cost.py [--data ../shared/data] [--out analyzers/npu_dispatch_cost.json]

For every torch_npu profile under `<data>/npu` (text and DB exports, every rank, and the trace_view.json
fragment), take the host `aten::` ops whose parent is not itself an aten op (the op a Python call
dispatched; its nested ops are its implementation), drop those that contain a host-device sync runtime
call (their duration is a wait, not dispatch), and group their host durations by op family (FAMILIES,
regular expressions on the op name). The result (median and quartiles per family, sample counts per
source) is what the analyzers use to cost ops that a CPU or GPU run predicts for the NPU. The file is
reproducible: tests/test_dispatch_cost.py re-derives it and compares.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

# Op families by the aten name without its namespace; the first matching family wins.
FAMILIES = [
    ("sync", r"^(item|_local_scalar_dense|is_nonzero|nonzero|masked_select|unique|_unique2|equal)$"),
    ("view", r"^(view|_unsafe_view|reshape|as_strided|slice|select|transpose|t|permute|expand|expand_as|"
             r"unsqueeze|squeeze|flatten|unflatten|split|split_with_sizes|chunk|unbind|narrow|detach|detach_|"
             r"alias|view_as|lift_fresh|numpy_T|contiguous)$"),
    ("copy", r"^(to|_to_copy|copy_|clone)$"),
    ("factory", r"^(empty|empty_strided|empty_like|zeros|zeros_like|ones|ones_like|full|full_like|arange|"
                r"linspace|rand|randn|randint|randperm|rand_like|randn_like|tensor|scalar_tensor|new_zeros|"
                r"new_empty|new_full|new_ones|new_empty_strided|eye)$"),
    ("matmul_conv", r"^(mm|addmm|bmm|baddbmm|matmul|linear|einsum|conv\w*|_convolution\w*|npu_convolution\w*)$"),
    ("foreach", r"^_foreach_\w+$"),
    ("reduction", r"^(sum|mean|max|min|amax|amin|norm|linalg_vector_norm|var|std|prod|softmax|_softmax|"
                  r"log_softmax|_log_softmax|logsumexp|cumsum|argmax|argmin|all|any|topk|sort)$"),
    ("indexing", r"^(index|index_put_?|_index_put_impl_|index_select|gather|scatter\w*|masked_fill_?|where|"
                 r"take|index_add_?|masked_scatter_?)$"),
    ("elementwise", r"^(add|sub|mul|div|rsub|neg|abs|pow|sqrt|rsqrt|exp|log|sigmoid|tanh|relu|gelu|silu|"
                    r"clamp\w*|maximum|minimum|lt|gt|le|ge|eq|ne|logical_\w+|bitwise_\w+|floor|ceil|round|sign|"
                    r"reciprocal|addcmul|addcdiv|lerp|fill|zero|threshold\w*|dropout|native_dropout|npu_dropout\w*|"
                    r"erf|sin|cos|atan2|hypot|softplus|leaky_relu|hardtanh|mish|square|floor_divide|remainder)_?$"),
]
OTHER = "other"
SYNC_OPS = re.compile(FAMILIES[0][1])
SYNC_RUNTIME = re.compile(r"^AscendCL@aclrtSynchronize")


def family_of(name: str, compiled=None) -> str:
    short = name.split("::", 1)[-1]
    for fam, pattern in compiled or [(f, re.compile(p)) for f, p in FAMILIES]:
        if pattern.match(short):
            return fam
    return OTHER


def sources(data: Path) -> list:
    """(label, path) of every torch_npu profile under data/npu, one per rank, in a fixed order."""
    npu = data / "npu"
    out = [(str(p.relative_to(data)), p) for p in sorted(npu.glob("*/*/rank*_ascend_pt"))]
    out += [(str(p.relative_to(data)), p) for p in sorted((npu / "fragments").glob("trace_view*.json"))]
    return out


def top_level_samples(trace) -> list:
    """(name, host duration in us) of the trace's top-level aten ops that hold no sync runtime call
    (sync-family ops always count)."""
    ops = trace.ops
    names = ops["name"].astype(str).to_numpy()
    parent = ops["parent"].to_numpy()
    is_aten = np.char.startswith(names.astype(str), "aten::")
    parent_aten = np.where(parent >= 0, is_aten[np.maximum(parent, 0)], False)
    top = is_aten & ~parent_aten
    rt = trace.runtime
    if len(rt):
        syncing = rt["name"].astype(str).str.match(SYNC_RUNTIME.pattern).to_numpy() & (rt["op"].to_numpy() >= 0)
        holds = np.zeros(len(ops), dtype=bool)
        rows = rt["op"].to_numpy()[syncing]
        # the sync call's innermost op and every op above it hold the wait
        for _ in range(16):
            if not len(rows):
                break
            holds[rows] = True
            rows = parent[rows]
            rows = rows[rows >= 0]
        # sync-family ops keep theirs: their cost on an NPU is that round trip, wait included
        top &= ~holds | np.asarray([bool(SYNC_OPS.match(n.split("::", 1)[-1])) for n in names], dtype=bool)
    durs = ops["dur"].to_numpy()
    return [(str(n), float(d) / 1000.0) for n, d in zip(names[top], durs[top])]


def _stats(values) -> dict:
    v = np.asarray(values, dtype=float)
    return {"median_us": round(float(np.median(v)), 3), "p25_us": round(float(np.percentile(v, 25)), 3),
            "p75_us": round(float(np.percentile(v, 75)), 3), "samples": int(len(v))}


def derive(data: Path) -> dict:
    sys.path.insert(0, str(REPO))
    from npu_advise.load import load_kineto_file, load_profile
    compiled = [(f, re.compile(p)) for f, p in FAMILIES]
    per_family: dict = {}
    files = []
    for label, path in sources(data):
        traces = load_profile(path) if path.is_dir() else [load_kineto_file(path)]
        samples = [s for t in traces for s in top_level_samples(t)]
        files.append({"source": label, "top_level_aten_ops": len(samples)})
        for name, dur in samples:
            fam = family_of(name, compiled)
            entry = per_family.setdefault(fam, {"values": [], "by_source": {}, "ops": {}})
            entry["values"].append(dur)
            entry["by_source"][label] = entry["by_source"].get(label, 0) + 1
            entry["ops"][name] = entry["ops"].get(name, 0) + 1
    families = {}
    for fam in [f for f, _ in FAMILIES] + [OTHER]:
        if fam not in per_family:
            continue
        e = per_family[fam]
        top_ops = sorted(e["ops"].items(), key=lambda kv: (-kv[1], kv[0]))[:8]
        families[fam] = {**_stats(e["values"]), "by_source": dict(sorted(e["by_source"].items())),
                         "most_common_ops": [f"{n} x{c}" for n, c in top_ops]}
    every = [v for e in per_family.values() for v in e["values"]]
    return {
        "what": "host dispatch cost of one top-level aten op on Ascend NPUs (torch_npu), by op family",
        "unit": "us",
        "how": "host duration of every aten op whose parent is not an aten op (the op a Python call "
               "dispatched), without ops that contain an AscendCL@aclrtSynchronize* call (a wait, not "
               "dispatch) except the sync family itself (item, nonzero, ...: the round trip is its cost); grouped by FAMILIES (regular expressions on the op name, first match wins); "
               "median and quartiles over all sources. Derived by benchmarks/derive_dispatch_cost.py from "
               "the real torch_npu profiles in ../shared/data/npu.",
        "caveats": "few runs (AlexNet DDP on 2 ranks, an Adam optimizer slice): a per-family order of magnitude, "
                   "not a prediction for a particular model; sync-family durations include the wait for the "
                   "device queue in those runs",
        "families_definition": [{"family": f, "pattern": p} for f, p in FAMILIES],
        "sources": files,
        "families": families,
        "all_ops": _stats(every),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "analyzers" / "npu_dispatch_cost.json")
    args = parser.parse_args(argv)
    result = derive(args.data)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    for fam, e in result["families"].items():
        print(f"{fam:12s} median {e['median_us']:9.1f} us  (p25 {e['p25_us']:.1f}, p75 {e['p75_us']:.1f})  "
              f"n={e['samples']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
