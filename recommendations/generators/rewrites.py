"""Candidate rewrites beyond the guide's idioms, for loop findings (NPA501) and the syncs a loop or a check
repeats (NPA301/302): map loops (broadcast, torch.vmap, stacked lists), per-tensor in-place updates as torch._foreach_*, scalar reads hoisted into one
`.tolist()`, batched host transfers, per-group loops as segment ops, device checks without a host read.

They run after the guide's idioms (recommendations/generators/loops.py, which prove their rewrites from the
syntax) and give every candidate the codemods make for the loop at the finding, best first: the first becomes
the fix, the others its `alternatives`, which the verification stage tries in turn. What each generator
rewrites and when it refuses is documented with the rule (`npu-advise rules NPA501`, rewrite_docs.py)."""
from __future__ import annotations

import importlib

from ..registry import fix_generator

# codemods modules, in the order their candidates are preferred
LOOP_CODEMODS = ("segments", "foreach", "map_loops", "scalar_reads", "index_reads", "transfers")
SYNC_CODEMODS = ("segments", "checks", "device_math", "masked_reductions", "masked_losses", "masked_assign", "scalar_reads",
                 "index_reads", "element_reads", "stacked_reads", "transfers", "log_reads")


def _candidates(finding, src, modules: tuple, lines: list):
    path, text, loc = src.located(finding)
    if text is None:
        return None
    rewrites = []
    for line in dict.fromkeys(lines):
        for name in modules:
            codemod = importlib.import_module(f"{__package__.rsplit('.', 1)[0]}.codemods.{name}")
            rewrites += codemod.candidates(text, line)
        if rewrites:
            break
    if not rewrites:
        return None
    made = [src.candidate(path, text, r, f"rewrites.{r.generator}") for r in rewrites]
    made[0].alternatives = made[1:]
    finding.details["rewrite_generator"] = rewrites[0].generator
    return made[0]


@fix_generator("rewrites.loop", rules=("NPA5",), order=110)
def loop_rewrite(finding, src):
    loc = finding.locations[0]
    return _candidates(finding, src, LOOP_CODEMODS, [int(finding.details.get("loop_line") or loc.line), loc.line])


@fix_generator("rewrites.sync", rules=("NPA301", "NPA302"), order=110)
def sync_rewrite(finding, src):
    return _candidates(finding, src, SYNC_CODEMODS, [finding.locations[0].line])
