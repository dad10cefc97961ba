"""Migration findings (rules NPA901-NPA906): one-time setup at the training entry point, launch scripts,
and > 6-D matmuls seen in the recorded shapes.

This module imports no libcst (`all_rules()` imports it to register the rules): the entry-point codemods
(codemods/migration.py) are imported when a source text is rewritten."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

from npu_advise.rules import Rule

from .catalog import load
from .evidence import parse_dims

MATMUL_MAX_DIMS = 6          # NPU matmul supports at most this many dimensions (seed 3.2.3 step 8)
LAUNCH_SCRIPT_GLOBS = ("*.sh", "tools/*.sh", "scripts/*.sh", "test/*.sh")
MAX_LAUNCH_SCRIPTS = 50

RULES = {
    "patcher": Rule("NPA901", "patcher-entry-point", "migration",
                    "A training entry point whose `main()` does not run inside mx_driving's patcher.",
                    "Without it mmcv/mmdet models keep their CUDA-only or slow generic ops (MSDA, DCN, sparse conv, "
                    "ResNet add+relu, DDP, bool-mask indexing) on the NPU.",
                    "with default_patcher_builder.build() as patcher: main()  "
                    "(from mx_driving.patcher import default_patcher_builder)."),
    "transfer_to_npu": Rule("NPA902", "transfer-to-npu", "migration",
                            "An entry point that imports neither torch_npu nor torch_npu.contrib.transfer_to_npu.",
                            "CUDA calls (.cuda(), torch.cuda.*) fail or stay on the CPU without the redirection.",
                            "import torch_npu; from torch_npu.contrib import transfer_to_npu (once, at the entry point)."),
    "npu_ddp": Rule("NPA903", "mmcv-npu-ddp", "migration",
                    "mmcv MMDataParallel / MMDistributedDataParallel.",
                    "mmcv's CUDA wrappers scatter inputs to CUDA devices.",
                    "NPUDataParallel / NPUDistributedDataParallel from mmcv.device.npu."),
    "local_rank": Rule("NPA904", "local-rank-argument", "migration",
                       "argparse declares --local_rank but not --local-rank.",
                       "torch >= 2.0 launchers pass --local-rank; the script exits with 'unrecognized arguments'.",
                       "Add parser.add_argument('--local-rank', ...) beside --local_rank."),
    "matmul_rank": Rule("NPA905", "matmul-over-6d", "migration",
                        "matmul whose recorded input has more than MATMUL_MAX_DIMS dimensions.",
                        "The NPU matmul supports at most 6 dimensions; higher ranks fail or fall back.",
                        "Flatten the batch dimensions before the matmul (e.g. view(B, N, -1, k, m)) and restore them after.",
                        {"MATMUL_MAX_DIMS": MATMUL_MAX_DIMS}),
    "launch_env": Rule("NPA906", "launch-script-env", "migration",
                       "A launch script (*.sh) that starts training without the recommended NPU environment variables.",
                       "TASK_QUEUE_ENABLE=2, CPU_AFFINITY_CONF=1, COMBINED_ENABLE=1 and "
                       "PYTORCH_NPU_ALLOC_CONF=expandable_segments:True cut host dispatch cost and allocator stalls "
                       "in DrivingSDK's migrated models.",
                       "export them in the launch script before the python command (check each against the trace: "
                       "NPA7xx findings say which the profile supports).",
                       {"LAUNCH_SCRIPT_GLOBS": LAUNCH_SCRIPT_GLOBS}),
}

# (kind, function of codemods/migration.py) in the order the findings are reported.
ENTRY_REWRITES = (
    ("transfer_to_npu", "rewrite_transfer_to_npu"),
    ("patcher", "rewrite_patcher"),
    ("local_rank", "rewrite_local_rank"),
)


def entry_rewrites(source: str) -> list:
    """(kind, Rewrite) for every one-time setup step the entry-point source still lacks."""
    from .codemods import migration

    out = []
    for kind, fn in ENTRY_REWRITES:
        r = getattr(migration, fn)(source)
        if r is not None:
            out.append((kind, r))
    return out


def wide_matmuls(ops) -> list:
    """(loc, max rank, shapes) of recorded matmul ops with an input of more than MATMUL_MAX_DIMS dims."""
    if len(ops) == 0:
        return []
    names = ops["name"].astype(str)
    sel = ops[names.str.contains("matmul", regex=False) | names.isin(["aten::bmm", "aten::mm"])]
    out = {}
    for loc, dims in zip(sel["loc"].to_numpy(), sel["input_dims"]):
        shapes = parse_dims(dims)
        rank = max((len(s) for s in shapes), default=0)
        if rank > MATMUL_MAX_DIMS and int(loc) >= 0 and int(loc) not in out:
            out[int(loc)] = (rank, shapes)
    return [(loc, r, s) for loc, (r, s) in out.items()]


_PY_LAUNCH = re.compile(r"\b(python[0-9.]*|torchrun|torch\.distributed\.(launch|run))\b")
_EXPORT = re.compile(r"^\s*(?:export\s+)?([A-Z_][A-Z0-9_]*)=", re.M)


def launch_scripts_missing_env(root: Optional[Path]) -> list:
    """(script path, line of the first python launch, missing variables) for launch scripts under `root`."""
    if root is None:
        return []
    wanted = load().data["launch_env_defaults"]
    out = []
    seen = 0
    for pattern in LAUNCH_SCRIPT_GLOBS:
        for p in sorted(Path(root).glob(pattern)):
            seen += 1
            if seen > MAX_LAUNCH_SCRIPTS:
                return out
            try:
                text = p.read_text(encoding="utf-8", errors="replace")
            except OSError:
                continue
            launch_line = next((i for i, l in enumerate(text.split("\n"), 1)
                                if _PY_LAUNCH.search(l) and not l.lstrip().startswith("#")), None)
            if launch_line is None:
                continue
            present = set(_EXPORT.findall(text))
            missing = [v for v in wanted if v not in present]
            if missing:
                out.append((p, launch_line, missing))
    return out
