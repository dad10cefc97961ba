"""Vectorized rewrites of Python loops of small ops (NPA501), and of the syncs such a loop repeats."""
from __future__ import annotations

from npu_advise.findings import Fix

from ..registry import fix_generator

SYNC_RULES = ("NPA301", "NPA302")
# Loop rewrites that remove per-element device->host reads (the affine interpolation loop has none).
SYNC_LOOP_IDIOMS = ("prefix_mask", "item_loop")


@fix_generator("loops.vectorize", rules=("NPA5",))
def vectorize_loop(finding, src):
    path, text, loc = src.located(finding)
    if text is None:
        return None
    from ..codemods import loops

    d = finding.details
    line = int(d.get("loop_line") or loc.line)
    found = loops.rewrite_loop(text, line, d.get("idiom"))
    if found is None and line != loc.line:
        found = loops.rewrite_loop(text, loc.line, d.get("idiom"))
    if found is None:
        return Fix(
            description=("Vectorize the loop: replace the per-element ops with whole-tensor ops (masks from "
                         "`torch.arange(L) < lengths[:, None]`, one `.tolist()` instead of `.item()` per element, "
                         "index tensors instead of per-index slicing). The loop does not have one of the shapes "
                         "npu-advise rewrites automatically."),
            auto_applicable=False, fix_id=finding.id, catalog_ref=None, file=src.rel(path))
    idiom, rewrite = found
    d["idiom_matched"] = idiom
    return src.candidate(path, text, rewrite, f"loops.{idiom}")


@fix_generator("loops.sync_in_loop", rules=SYNC_RULES)
def sync_in_loop(finding, src):
    """A sync (NPA301/302) at a line inside a loop that reads device values one element at a time (a
    prefix-mask or `.item()` loop) gets that loop's vectorized rewrite -- the same diff an NPA501 finding
    on the loop gets, so `apply` makes the change once."""
    path, text, loc = src.located(finding)
    if text is None or "for" not in text:
        return None
    from ..codemods import loops

    for idiom in SYNC_LOOP_IDIOMS:
        found = loops.rewrite_loop(text, loc.line, idiom, only=True)
        if found is not None:
            finding.details["idiom_matched"] = idiom
            candidate = src.candidate(path, text, found[1], f"loops.{idiom}")
            candidate.description = (f"This sync repeats for every element of the loop around line {loc.line}. "
                                     + found[1].description)
            return candidate
    return None
